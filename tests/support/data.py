"""The open datasets the integration tests read: ../shared/data beside the project, or $EAGRL_SHARED_DATA."""
from __future__ import annotations

from pathlib import Path

import pytest

from eagrl.data.sources import shared_data_dir


def shared_dir() -> Path:
    """The shared data folder; fails the calling test (never skips: the suite asserts on real data) when absent."""
    folder = shared_data_dir()
    if not folder.is_dir():
        pytest.fail(f"this test reads the open datasets, expected in {folder} (or set EAGRL_SHARED_DATA)",
                    pytrace=False)
    return folder
