"""Exported JSON Schemas of the event contract (docs/schema/*.schema.json are generated from here)."""

from __future__ import annotations

from pathlib import Path

import orjson

from dcpulse.contract import DeadLetter, TelemetryBatch, Watermark

SCHEMAS = {"telemetry-v2": TelemetryBatch, "watermark-v1": Watermark, "deadletter-v2": DeadLetter}


def schema_documents() -> dict[str, bytes]:
    """File name -> JSON Schema bytes (by alias: the wire names, e.g. `schema`)."""
    return {
        f"{name}.schema.json": orjson.dumps(model.model_json_schema(by_alias=True),
                                            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        for name, model in SCHEMAS.items()
    }


def export(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, body in schema_documents().items():
        path = directory / name
        path.write_bytes(body)
        written.append(path)
    return written
