"""Real services for tests, on 127.0.0.1 only, stopped when the block ends: PostgreSQL and `mlflow server`.

PostgreSQL comes from the Debian package (`.ci/services` installs it when missing); it refuses to run as
root, so as root its data folder belongs to the package's ``postgres`` user and its commands run as that user.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from eagrl.serve.process import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:  # install it the way CI does; a failure here is an error, never a skip
        subprocess.run([str(ROOT / ".ci" / "services")], check=True)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found after .ci/services (run `make services`)")
    return Path(found[-1]).parent


@contextlib.contextmanager
def postgres(database: str = "mlflow"):
    """Yield ``postgresql+psycopg2://eagrl@127.0.0.1:<port>/<database>`` of a throw-away cluster."""
    bindir = pg_bin()
    home = Path(tempfile.mkdtemp(prefix="eagrl-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def run(*cmd):
        return subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)

    try:
        run(str(bindir / "initdb"), "-D", str(home / "data"), "-U", "eagrl", "--auth=trust", "-E", "UTF8")
        run(str(bindir / "pg_ctl"), "-D", str(home / "data"), "-l", str(home / "log"), "-w", "-t", "60", "start",
            "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1")
        try:
            run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "eagrl", database)
            yield f"postgresql+psycopg2://eagrl@127.0.0.1:{port}/{database}"  # the driver in the dev extra
        finally:
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(home / "data"), "-m", "fast", "-w", "stop"],
                           capture_output=True)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"PostgreSQL did not start: {exc.cmd}: {exc.stderr}") from None
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, timeout: float = 120):
    """Yield the URL of `mlflow server` on the backend store, proxying artifacts to ``artifacts``."""
    port = free_port()
    log = open(artifacts.parent / "mlflow-server.log", "w")
    exe = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(exe), "server", "--backend-store-uri", backend_uri, "--serve-artifacts",
                             "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, f"{url}/health", artifacts.parent / "mlflow-server.log", timeout, "mlflow server")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
