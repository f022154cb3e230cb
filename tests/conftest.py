"""Shared fixtures: the real open datasets in ../shared/data and throw-away workspaces."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from eagrl.data.sources import shared_data_dir  # noqa: E402

SHARED = shared_data_dir()
if not SHARED.is_dir():  # never skip silently: the suite asserts on real data
    raise RuntimeError(f"the open datasets are expected in {SHARED} (or set EAGRL_SHARED_DATA)")


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_restored():
    """Stages and MLflow helpers set the process-wide tracking URI (and export MLFLOW_TRACKING_URI); a test
    that runs them in-process must not point the next test's clients at its own store."""
    import mlflow

    env = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(env)
    if env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = env


@pytest.fixture(scope="module")
def tiny():
    """The tiny random policy (model, tokenizer) built from a config, one per test module."""
    from eagrl.llm.loading import build_tiny

    return build_tiny()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED


@pytest.fixture()
def workspace(tmp_path, monkeypatch) -> Path:
    """An empty workspace: its own data/, DVC repo, mlflow.db; MLFLOW_TRACKING_URI unset."""
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))
    return ws


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the installed `eagrl` entry point in a subprocess, as a user would."""
    exe = Path(sys.executable).parent / "eagrl"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
