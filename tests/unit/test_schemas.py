from pathlib import Path

import orjson

from dcpulse.schemas import schema_documents

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schema"


def test_committed_json_schemas_match_the_models() -> None:
    """Regenerate with `dcpulse schema export` when the contract changes."""
    documents = schema_documents()
    assert set(documents) == {"telemetry-v2.schema.json", "watermark-v1.schema.json", "deadletter-v2.schema.json"}
    assert sorted(p.name for p in DOCS.iterdir()) == sorted(documents)  # no stale file left behind
    for name, body in documents.items():
        assert (DOCS / name).read_bytes() == body, f"docs/schema/{name} is stale"


def test_telemetry_schema_names_the_wire_fields() -> None:
    schema = orjson.loads(schema_documents()["telemetry-v2.schema.json"])
    assert set(schema["required"]) == {"site", "agent", "samples"}
    assert "schema" in schema["properties"] and schema["additionalProperties"] is False
    assert schema["properties"]["samples"]["minItems"] == 1
    sample = schema["$defs"]["Sample"]
    assert set(sample["required"]) == {"device", "kind", "seq", "ts", "metrics"}
    assert sample["additionalProperties"] is False


def test_watermark_schema_names_the_wire_fields() -> None:
    schema = orjson.loads(schema_documents()["watermark-v1.schema.json"])
    assert set(schema["required"]) == {"site", "producer", "ts"}
    assert schema["properties"]["schema"]["const"] == "dcpulse.watermark/1"
