"""Copying a read-only source into the workspace as a user who is not root (the shared data is mounted
read-only in the containers, which run as 10001): the copy must be the user's to rename and replace."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CODE = """
import sys
from pathlib import Path
from eagrl.data.stage import _replace_dir
src, dest = Path(sys.argv[1]), Path(sys.argv[2])
_replace_dir(src, dest, copy=True)
_replace_dir(src, dest, copy=True)  # a second import replaces the first
print(sorted(p.name for p in dest.iterdir()), (dest / "visits.csv").read_text())
"""


def test_a_read_only_source_is_copied_and_replaced_by_a_user_who_is_not_root():
    if os.geteuid() != 0 and not shutil.which("setpriv"):
        raise AssertionError("this test needs either root (to run as nobody) or setpriv")
    parent = Path(tempfile.mkdtemp(prefix="eagrl-ro-src-"))
    try:
        parent.chmod(0o777)
        src = parent / "shared" / "mimic"
        (src / "sub").mkdir(parents=True)
        (src / "visits.csv").write_text("a,b\n1,2\n")
        (src / "sub" / "x.txt").write_text("x")
        for p in (src / "sub" / "x.txt", src / "visits.csv", src / "sub", src):
            p.chmod(0o444 if p.is_file() else 0o555)
        ws = parent / "ws"
        ws.mkdir()
        ws.chmod(0o777)
        prefix = (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else [])
        res = subprocess.run([*prefix, sys.executable, "-c", CODE, str(src), str(ws / "data" / "raw" / "mimic")],
                             capture_output=True, text=True, timeout=120, cwd=parent,
                             env={**os.environ, "HOME": str(parent)})
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.stdout.strip() == "['sub', 'visits.csv'] a,b\n1,2"
        assert sorted(p.name for p in (ws / "data" / "raw").iterdir()) == ["mimic"]  # no staging folder left
    finally:
        for p in parent.rglob("*"):
            p.chmod(0o777)
        shutil.rmtree(parent, ignore_errors=True)
