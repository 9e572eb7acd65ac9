import os

import pytest


@pytest.fixture(autouse=True)
def _no_dcpulse_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests check defaults: a developer's or CI's DCPULSE_* variables must not leak in."""
    for name in list(os.environ):
        if name.startswith("DCPULSE_"):
            monkeypatch.delenv(name)
