"""DVC versioning of the workspace's ``data/`` folder (raw imports and prepared cohorts), as ``data.dvc``.

The whole folder is one DVC output, so ``data.dvc`` at the workspace root pins everything a run read and
wrote; a run records that hash in MLflow. Content-addressed storage means a new version never overwrites an
old one: ``git checkout <rev> data.dvc && dvc checkout`` brings any earlier state back.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from eagrl.errors import EagrlError

LOCAL_REMOTE_DIR = ".dvc-storage"


def _quiet_env(root: Path) -> None:
    # DVC otherwise writes its site cache to /var/tmp/dvc, outside the workspace.
    os.environ.setdefault("DVC_SITE_CACHE_DIR", str(root / ".dvc" / "site-cache"))
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")


class DataStore:
    """A DVC repo at ``root`` with one remote (the local ``.dvc-storage`` unless ``remote_url`` is given)."""

    def __init__(self, root: str | Path, remote_url: str | None = None):
        self.root = Path(root).resolve()
        self.data_dir = self.root / "data"
        # DVC stores a local remote path relative to .dvc/, so the committed config works in any clone.
        self.remote_url = remote_url or str(self.root / LOCAL_REMOTE_DIR)
        _quiet_env(self.root)

    def _repo(self):
        from dvc.repo import Repo

        if not (self.root / ".dvc").is_dir():
            Repo.init(str(self.root), no_scm=not (self.root / ".git").exists())
        repo = Repo(str(self.root))
        with repo.config.edit() as conf:  # idempotent: only writes when the remote differs from config
            current = conf["remote"].get("storage", {}).get("url")
            if not self._same_remote(current) or conf["core"].get("remote") != "storage":
                conf["remote"]["storage"] = {"url": self.remote_url}
                conf["core"]["remote"] = "storage"
        return repo

    def _same_remote(self, url: str | None) -> bool:
        if url is None:
            return False
        if "://" in url or "://" in self.remote_url:
            return url == self.remote_url
        here = Path(url) if Path(url).is_absolute() else self.root / ".dvc" / url  # relative to .dvc/
        return here.resolve() == Path(self.remote_url).resolve()

    def commit(self) -> dict[str, str]:
        """Track ``data/`` (writes data.dvc), push to the remote, and return the version hashes."""
        if not self.data_dir.is_dir():
            raise EagrlError(f"nothing to version: {self.data_dir} does not exist")
        logging.getLogger("dvc").setLevel(logging.WARNING)  # its git hints are not for pipeline users
        try:
            repo = self._repo()
            repo.add(str(self.data_dir))
            repo.push()
        except Exception as exc:  # DVC's own errors are many; name the step and the remote
            raise EagrlError(f"DVC could not version {self.data_dir} to {self.remote_url}: {exc}") from exc
        return {"dvc_data_md5": self.data_hash() or ""}

    def data_hash(self) -> str | None:
        """The md5 that data.dvc records for data/ (None before the first commit)."""
        import yaml

        path = self.root / "data.dvc"
        if not path.is_file():
            return None
        outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
        return outs[0].get("md5")


def tree_md5(path: str | Path) -> str:
    """DVC-style digest of a folder (md5 of the sorted relpath/md5 manifest), to name one sub-folder's version."""
    root = Path(path)
    entries = []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        entries.append({"md5": hashlib.md5(f.read_bytes()).hexdigest(), "relpath": f.relative_to(root).as_posix()})
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"
