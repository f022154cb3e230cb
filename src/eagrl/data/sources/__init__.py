"""Source loaders. Each module has the same small surface:

``NAME``; ``REQUIRED_COLUMNS``: native table -> {column: kind} with kind in numeric|datetime|string|any
(the validation stage turns it into Great Expectations checks before anything else reads the tables);
optionally ``DOMAINS``: native table -> {column: [allowed values] | (min, max)}, checked on every row;
``default_path() -> Path``; ``read(path) -> dict[str, DataFrame]`` (native tables; a malformed file raises
DataError naming the file and the problem); ``to_raw(native, cfg) -> RawEHR``.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from eagrl.errors import DataError

_MODULES = {
    "tjh": "tjh",
    "mimic-iv-demo": "clif",
    "clif": "clif",
    "meds": "meds",
    "physionet2012": "physionet2012",
    "synthetic": "synthetic",
}


def shared_data_dir() -> Path:
    """Where the open datasets live: $EAGRL_SHARED_DATA, else ../shared/data beside the project."""
    env = os.environ.get("EAGRL_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[4].parent / "shared" / "data"


def get_source(dataset: str) -> ModuleType:
    if dataset not in _MODULES:
        raise DataError(f"unknown dataset {dataset!r}: choose one of {', '.join(_MODULES)}")
    return importlib.import_module(f"eagrl.data.sources.{_MODULES[dataset]}")
