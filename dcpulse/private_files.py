"""Files that hold a secret (a token, a password, a private key): owner-only from the first byte."""

from __future__ import annotations

import os
from pathlib import Path


class MissingSecret(RuntimeError):
    """A login or token file that is not there: the message says how to get it."""


def write_private(path: Path, text: str) -> None:
    """Write `path` atomically with mode 0600 (no window where it is readable by others), in a
    directory created 0700."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
