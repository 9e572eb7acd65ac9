from pathlib import Path

import orjson

from dcpulse.schemas import schema_documents

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schema"


def test_committed_json_schemas_match_the_models() -> None:
    """Regenerate with `dcpulse schema export` when the contract changes."""
    for name, body in schema_documents().items():
        assert (DOCS / name).read_bytes() == body, f"docs/schema/{name} is stale"


def test_telemetry_schema_names_the_wire_fields() -> None:
    schema = orjson.loads(schema_documents()["telemetry-v1.schema.json"])
    assert set(schema["required"]) == {"site", "device", "kind", "seq", "ts", "metrics"}
    assert "schema" in schema["properties"] and "extra" not in schema["properties"]
    assert schema["additionalProperties"] is False
