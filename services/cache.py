"""Version-keyed artefact cache outside the checkout (default ~/.cache/dcpulse).

An artefact is built into a scratch directory and renamed into place only once it is whole,
with a COMPLETE marker written last. A directory without the marker is never trusted: an
interrupted or failed build is thrown away and redone.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER = "COMPLETE"


def artefact_dir(cache_dir: Path, name: str, version: str) -> Path:
    """Where artefact `name` at `version` lives, e.g. ~/.cache/dcpulse/kafka/3.9.1."""
    if not name or "/" in name or not version or "/" in version:
        raise ValueError(f"bad artefact key {name!r} {version!r}")
    return cache_dir / name / version


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def read_manifest(path: Path) -> dict[str, object]:
    return json.loads((path / MARKER).read_text())


@contextmanager
def building(final: Path, manifest: dict[str, object]) -> Iterator[Path]:
    """Yield a scratch dir; on clean exit move it to `final` and mark it complete.

    On any exception (or Ctrl-C) the scratch dir is removed and `final` is left untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        yield scratch
        (scratch / MARKER).write_text(
            json.dumps({**manifest, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        )
        if final.exists():  # a stale, unmarked leftover from an older interrupted build
            shutil.rmtree(final)
        os.replace(scratch, final)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
