from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def piddir(tmp_path: Path) -> Path:
    """Where the test model servers write their pids (--pid-file)."""
    d = tmp_path / "pids"
    d.mkdir()
    return d
