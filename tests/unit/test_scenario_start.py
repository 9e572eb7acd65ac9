"""Where `dcpulse simulate` starts: `--start`, else the scenario file's start, else now (as its
--help says). A scenario file without a start used to run from the model's fixed July 2026,
so every raw point of a live run was dead-lettered outside InfluxDB's retention."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from dcpulse.producers.scenario_args import build_scenario, resolve_start

NOW = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(text + '[[sites]]\npreset = "small"\n')  # top-level keys before the tables
    return path


def test_a_scenario_file_without_a_start_runs_from_now(tmp_path: Path) -> None:
    path = _file(tmp_path, "seed = 3\n")
    assert build_scenario([], path, [], None, resolve_start(None, path, NOW)).start == NOW


def test_a_scenario_files_own_start_is_kept_and_the_option_overrides_it(tmp_path: Path) -> None:
    path = _file(tmp_path, "start = 2026-09-01T00:00:00Z\n")
    assert build_scenario([], path, [], None, resolve_start(None, path, NOW)).start == datetime(2026, 9, 1, tzinfo=UTC)
    assert resolve_start("2026-10-01T00:00:00Z", path, NOW) == datetime(2026, 10, 1, tzinfo=UTC)
    assert resolve_start("now", path, NOW) == NOW


def test_presets_alone_run_from_now_and_a_start_needs_a_zone() -> None:
    assert resolve_start(None, None, NOW) == NOW
    with pytest.raises(ValueError, match="time zone"):
        resolve_start("2026-10-01T00:00:00", None, NOW)
