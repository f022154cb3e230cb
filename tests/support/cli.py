"""The ``eagrl`` command as a user runs it (a subprocess of the installed entry point), and the same command called
in this process (no interpreter start, no imports repeated: for tests that call it many times)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the installed `eagrl` entry point in a subprocess, as a user would."""
    exe = Path(sys.executable).parent / "eagrl"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def call_cli(*args: str) -> subprocess.CompletedProcess:
    """The same command line through the same typer app, in this process: its exit code, stdout and stderr as
    :func:`run_cli` returns them. MLFLOW_TRACKING_URI is unset for the call, as run_cli leaves it out."""
    from typer.testing import CliRunner

    from eagrl.cli import app

    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a crash of the test's own making, not a command's failure
    return subprocess.CompletedProcess(["eagrl", *args], result.exit_code, result.stdout, result.stderr)
