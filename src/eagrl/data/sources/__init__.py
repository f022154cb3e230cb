"""Source loaders. Each module has the same small surface:

``NAME``; ``REQUIRED_COLUMNS``: native table -> {column: kind} with kind in numeric|datetime|string|any
(the validation stage turns it into Great Expectations checks before anything else reads the tables);
optionally ``DOMAINS``: native table -> {column: [allowed values] | (min, max)}, checked on every row;
``DEFAULT_TASK`` (or ``default_task(path) -> str`` where the data says it); ``default_path() -> Path``;
``read(path) -> dict[str, DataFrame]`` (native tables; a malformed file raises DataError naming the file and the
problem); ``to_raw(native, cfg) -> RawEHR``.
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


def default_task(dataset: str, data_path: str | Path | None = None) -> str:
    """The task a dataset is predicted for when none is given: the source's ``DEFAULT_TASK``, or what its
    ``default_task(path)`` reads from the data (MEDS: the label table's). DataError when it has none."""
    module = get_source(dataset)
    if hasattr(module, "default_task"):
        return module.default_task(Path(data_path) if data_path else module.default_path())
    task = getattr(module, "DEFAULT_TASK", None)
    if task is None:
        raise DataError(f"{dataset} has no default task: pass --task")
    return task


def get_source(dataset: str) -> ModuleType:
    if dataset not in _MODULES:
        raise DataError(f"unknown dataset {dataset!r}: choose one of {', '.join(_MODULES)}")
    return importlib.import_module(f"eagrl.data.sources.{_MODULES[dataset]}")
