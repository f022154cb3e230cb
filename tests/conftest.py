"""Shared fixtures: the real open datasets in ../shared/data and throw-away workspaces.

Helpers that tests import live in the ``support`` package (tests/support/), not here. Collecting the tests
needs no data: the tests that read it ask for the ``shared_data`` fixture, which fails (never skips: the suite
asserts on real data) naming the folder it expected.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


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
    """../shared/data (or $EAGRL_SHARED_DATA); the test fails, naming that folder, when it is missing."""
    from support.data import shared_dir  # imports eagrl, after the environment above is set

    return shared_dir()


@pytest.fixture()
def workspace(tmp_path, monkeypatch) -> Path:
    """An empty workspace: its own data/, DVC repo, mlflow.db; MLFLOW_TRACKING_URI unset."""
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))
    return ws

