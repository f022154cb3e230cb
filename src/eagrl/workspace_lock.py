"""One writer per workspace: the commands that write ``data/``, ``data.dvc`` and ``mlflow.db`` hold a lock on it.

``with workspace_lock(cfg.workspace, wait_s=cfg.pipeline.lock_wait_s):`` takes an OS file lock (``filelock``:
``flock`` on POSIX, released by the kernel if the process dies) on ``<workspace>/.eagrl.lock`` and records who
holds it in ``<workspace>/.eagrl.lock.json`` (pid, command line, start time, host). A second command on the same
workspace waits up to ``wait_s`` seconds (``pipeline.lock_wait_s``; 0: not at all) and then stops with
:class:`WorkspaceBusy`, whose one line names the holder; it has written nothing. The holder's child processes
(the pipeline's stages) see ``EAGRL_WORKSPACE_LOCKED`` and do not lock again. A workspace where the lock cannot
be created (read-only, full, not a folder) stops with :class:`WorkspaceNotWritable` before anything is written.
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from eagrl.errors import EagrlError

LOCK_NAME = ".eagrl.lock"
HOLDER_NAME = ".eagrl.lock.json"
ENV = "EAGRL_WORKSPACE_LOCKED"  # the workspace this process tree holds


class WorkspaceBusy(EagrlError):
    """Another process holds the workspace."""


class WorkspaceNotWritable(EagrlError):
    """The workspace's lock (so anything else) cannot be written there."""


def command_line(argv: list[str] | None = None) -> str:
    """``eagrl data prepare --dataset tjh ...`` as the holder file shows it (program name without its folder)."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        argv[0] = Path(argv[0]).name
    return shlex.join(argv)[:300]


def holder(workspace: str | Path) -> dict | None:
    """Who holds (or last held) the workspace, from its holder file; None when there is none or it is unreadable."""
    try:
        return json.loads((Path(workspace) / HOLDER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def describe(info: dict | None) -> str:
    if not info:
        return "another process (it has not written its pid yet)"
    return (f"pid {info.get('pid')} on {info.get('host')} (`{info.get('command')}`, started "
            f"{info.get('started')})")


@contextmanager
def workspace_lock(workspace: str | Path, command: str | None = None, wait_s: float = 0.0) -> Iterator[Path]:
    """Hold ``workspace`` for the duration of the block; see the module docstring. Yields the lock file."""
    ws = Path(workspace).resolve()
    if os.environ.get(ENV) == str(ws):  # a child of the holder (a pipeline stage): the parent's lock covers it
        yield ws / LOCK_NAME
        return
    lock_path = ws / LOCK_NAME
    try:
        ws.mkdir(parents=True, exist_ok=True)
        lock = FileLock(lock_path, timeout=wait_s, blocking=wait_s > 0)
        lock.acquire()
    except Timeout:
        info = _holder_soon(ws)
        waited = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
        raise WorkspaceBusy(f"workspace {ws} is in use by {describe(info)}{waited}; nothing was written. Wait for it "
                            f"to finish, set pipeline.lock_wait_s to wait, or use another --workspace") from None
    except OSError as exc:
        raise WorkspaceNotWritable(f"workspace {ws} is not writable ({exc.strerror or exc}: "
                                   f"{exc.filename or lock_path}); nothing was written") from None
    try:
        info = {"pid": os.getpid(), "command": command or command_line(), "host": socket.gethostname(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            tmp = ws / f".{HOLDER_NAME}.{os.getpid()}"
            tmp.write_text(json.dumps(info), encoding="utf-8")
            os.replace(tmp, ws / HOLDER_NAME)
        except OSError as exc:
            raise WorkspaceNotWritable(f"workspace {ws} is not writable ({exc.strerror or exc}: {exc.filename}); "
                                       f"nothing was written") from None
        previous = os.environ.get(ENV)
        os.environ[ENV] = str(ws)
        try:
            yield lock_path
        finally:
            if previous is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = previous
            if (holder(ws) or {}).get("pid") == os.getpid():
                (ws / HOLDER_NAME).unlink(missing_ok=True)
    finally:
        lock.release()


def _holder_soon(ws: Path, patience_s: float = 2.0) -> dict | None:
    """The holder file, allowing a lock taken a moment ago the time to write it."""
    deadline = time.monotonic() + patience_s
    while True:
        info = holder(ws)
        if (info is not None and _alive(info)) or time.monotonic() > deadline:
            return info
        time.sleep(0.05)


def _alive(info: dict) -> bool:
    """False for the file of a holder that died on this host (the kernel freed its lock; the file stayed)."""
    if info.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(info["pid"]), 0)
    except (KeyError, TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
