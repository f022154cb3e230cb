"""One workspace, two processes: real `eagrl data prepare` and `eagrl run` started at once on the same workspace.

The second one stops at once with one line naming the holder (pid, command, start time) and writes nothing; the
first finishes (or, killed, frees the lock) and leaves data/, data.dvc and mlflow.db whole. With
``pipeline.lock_wait_s`` the second waits its turn instead. A workspace the user cannot write stops before
anything is written; a copy into data/ that fails (a full disk) keeps the previous version.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from support.cli import run_cli

from eagrl.data.cohort import Cohort
from eagrl.errors import DataError
from eagrl.workspace_lock import HOLDER_NAME, WorkspaceBusy, holder, workspace_lock

EAGRL = str(Path(sys.executable).parent / "eagrl")


def prepare_args(shared_data: Path, ws: Path, out: Path, *extra: str) -> list[str]:
    return ["data", "prepare", "--profile", "smoke", "--dataset", "tjh", "--data-path", str(shared_data / "tjh"),
            "--workspace", str(ws), "--out", str(out), *extra]


def run_args(ws: Path, out: Path) -> list[str]:
    return ["run", "--profile", "smoke", "--workspace", str(ws), "--out", str(out)]


def start(args: list[str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen([EAGRL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # its own process group, so the test can stop its stages too


def wait_for_holder(ws: Path, proc: subprocess.Popen, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = holder(ws)
        if info and info["pid"] == proc.pid:
            return info
        assert proc.poll() is None, f"the first command ended before it held the workspace: {proc.communicate()}"
        time.sleep(0.1)
    raise AssertionError(f"pid {proc.pid} never held {ws}")


def assert_refused_naming(res: subprocess.CompletedProcess, info: dict, command: str) -> None:
    assert res.returncode == 1, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("eagrl: error:")]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    line = lines[0]
    assert "is in use by" in line and f"pid {info['pid']}" in line and info["started"] in line, line
    assert command in line, line


def assert_whole(ws: Path) -> None:
    """mlflow.db passes SQLite's integrity check; data.dvc names the data/ that is there; no staging left over."""
    with sqlite3.connect(ws / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT count(*) FROM runs").fetchone()[0] > 0
    out = yaml.safe_load((ws / "data.dvc").read_text())["outs"][0]
    assert out["path"] == "data" and out["md5"].endswith(".dir")
    for cohort_dir in (ws / "data" / "cohorts").iterdir():
        assert not cohort_dir.name.startswith("."), f"staging folder left: {cohort_dir}"
        Cohort.load(cohort_dir)
    status = subprocess.run([str(Path(sys.executable).parent / "dvc"), "status", "data.dvc"], cwd=ws,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "modified" not in status.stdout, status.stdout + status.stderr


def test_prepare_first_then_run_is_refused_naming_the_holder(shared_data, workspace, tmp_path):
    first = start(prepare_args(shared_data, workspace, tmp_path / "out-a"))
    try:
        info = wait_for_holder(workspace, first)
        t0 = time.monotonic()
        second = run_cli(*run_args(workspace, tmp_path / "out-b"))
        assert time.monotonic() - t0 < 60  # at once: the start-up of the CLI, no waiting
        assert_refused_naming(second, info, "eagrl data prepare --profile smoke --dataset tjh")
        assert not (tmp_path / "out-b").exists()  # the refused run wrote nothing
    finally:
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert_whole(workspace)
    assert Cohort.load(workspace / "data" / "cohorts" / "tjh-mortality").statistics()["n_stays"] == 323
    assert not (workspace / HOLDER_NAME).exists()  # released: the holder file went with the lock


def test_run_first_then_prepare_is_refused_and_a_killed_holder_frees_the_workspace(shared_data, workspace, tmp_path):
    good = run_cli(*prepare_args(shared_data, workspace, tmp_path / "out-0"))
    assert good.returncode == 0, good.stderr
    first = start(run_args(workspace, tmp_path / "out-a"))
    try:
        info = wait_for_holder(workspace, first)
        second = run_cli(*prepare_args(shared_data, workspace, tmp_path / "out-b"))
        assert_refused_naming(second, info, "eagrl run --profile smoke")
        assert not (tmp_path / "out-b").exists()
    finally:
        os.killpg(first.pid, signal.SIGTERM)  # the group this test started: the run and its stages
        first.communicate(timeout=120)
    # the killed holder's file may stay, but the kernel freed its lock: the next command runs
    again = run_cli(*prepare_args(shared_data, workspace, tmp_path / "out-c"))
    assert again.returncode == 0, again.stderr
    assert_whole(workspace)


@pytest.mark.slow
def test_with_lock_wait_the_second_prepare_runs_after_the_first(shared_data, workspace, tmp_path):
    first = start(prepare_args(shared_data, workspace, tmp_path / "out-a"))
    wait_for_holder(workspace, first)
    second = run_cli(*prepare_args(shared_data, workspace, tmp_path / "out-b", "--set", "pipeline.lock_wait_s=600"),
                     timeout=900)
    first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    a = json.loads((tmp_path / "out-a" / "prepare" / "status.json").read_text())
    b = json.loads((tmp_path / "out-b" / "prepare" / "status.json").read_text())
    assert a["status"] == b["status"] == "succeeded"
    assert_whole(workspace)


def test_in_process_holder_and_children(tmp_path, monkeypatch):
    """The library: a second taker in another process is refused; the holder's own children are not."""
    ws = tmp_path / "ws"
    monkeypatch.delenv("EAGRL_WORKSPACE_LOCKED", raising=False)
    code = ("import sys; from eagrl.workspace_lock import workspace_lock\n"
            "try:\n    with workspace_lock(sys.argv[1]): print('held')\n"
            "except Exception as e: print(type(e).__name__, e)")
    with workspace_lock(ws, command="eagrl test-holder") as lock:
        assert lock.parent == ws.resolve() and holder(ws)["command"] == "eagrl test-holder"
        child = subprocess.run([sys.executable, "-c", code, str(ws)], capture_output=True, text=True, timeout=60)
        assert child.stdout.startswith("held")  # a child sees EAGRL_WORKSPACE_LOCKED and goes on
        env = {k: v for k, v in os.environ.items() if k != "EAGRL_WORKSPACE_LOCKED"}
        other = subprocess.run([sys.executable, "-c", code, str(ws)], capture_output=True, text=True, env=env,
                               timeout=60)
        assert other.stdout.startswith("WorkspaceBusy") and f"pid {os.getpid()}" in other.stdout
        assert "eagrl test-holder" in other.stdout
    assert holder(ws) is None and "EAGRL_WORKSPACE_LOCKED" not in os.environ
    with workspace_lock(ws):  # free again
        pass


def test_read_only_workspace_gets_a_clear_error(shared_data):
    """As a user without write permission on the workspace (root ignores modes, so the command runs as nobody)."""
    if os.geteuid() != 0 and not shutil.which("setpriv"):
        raise AssertionError("this test needs either root (to run as nobody) or setpriv")
    parent = Path(tempfile.mkdtemp(prefix="eagrl-ro-"))
    try:
        parent.chmod(0o755)
        ws = parent / "ws"
        ws.mkdir()
        (ws / "keep.txt").write_text("before")
        ws.chmod(0o555)
        prefix = (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else [])
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"HOME": str(parent)}
        res = subprocess.run([*prefix, EAGRL, *prepare_args(shared_data, ws, parent / "out")], capture_output=True,
                             text=True, env=env, timeout=300, cwd=parent)
        assert res.returncode == 1, res.stdout + res.stderr
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("eagrl: error:")]
        assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
        assert f"workspace {ws} is not writable (Permission denied" in lines[0], lines[0]
        assert sorted(p.name for p in ws.iterdir()) == ["keep.txt"] and (ws / "keep.txt").read_text() == "before"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_a_failed_copy_into_data_keeps_the_previous_version(tmp_path, monkeypatch):
    """A full disk during the copy into data/: the staged copy goes, the old folder stays, one-line DataError."""
    from eagrl.data import stage as stages

    src, dest = tmp_path / "new", tmp_path / "data" / "cohorts" / "x"
    src.mkdir()
    (src / "a.parquet").write_bytes(b"new")
    dest.mkdir(parents=True)
    (dest / "a.parquet").write_bytes(b"old")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))

    monkeypatch.setattr(stages.shutil, "copytree", full)
    with pytest.raises(DataError, match=r"cannot write .*No space left on device.*previous version is kept"):
        stages._replace_dir(src, dest, copy=True)
    assert (dest / "a.parquet").read_bytes() == b"old"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["x"]  # no staging folder left


def test_busy_message_without_a_holder_file(tmp_path, monkeypatch):
    """A lock whose holder has not written its file yet (or a foreign one) is still refused in one line."""
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.delenv("EAGRL_WORKSPACE_LOCKED", raising=False)
    code = ("import sys, time; from filelock import FileLock\n"
            "l = FileLock(sys.argv[1]); l.acquire(); print('ok', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(ws / ".eagrl.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ok"
        with pytest.raises(WorkspaceBusy, match="another process"):
            with workspace_lock(ws):
                pass
    finally:
        proc.kill()
        proc.wait()
