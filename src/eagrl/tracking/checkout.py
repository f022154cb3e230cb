"""``eagrl data checkout <mlflow-run-id>``: bring back the exact ``data/`` tree a past run read and wrote.

Every stage that versions ``data/`` tags its MLflow run with ``eagrl.dvc_data_md5`` (the DVC hash of the
whole folder: raw imports, cohorts, the expert's C_exp, trajectories); a pipeline run's version is the one
its last versioning stage wrote. DVC restores that version from the workspace cache, fetching what is missing
from the remote, into a scratch DVC project beside the workspace; the result then goes to
``<workspace>/checkouts/<run-id>/data`` (never over existing files), or, with ``force``, replaces the
workspace's ``data/`` after the current one is versioned, so nothing stored is lost either way.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from eagrl.errors import EagrlError
from eagrl.tracking.dvc_store import LOCAL_REMOTE_DIR, DataStore, _quiet_env

VERSION_TAG = "eagrl.dvc_data_md5"


@dataclass
class Checkout:
    run_id: str
    md5: str
    path: Path
    previous_md5: str | None = None  # the workspace version that ``force`` replaced (still in the cache)


def run_data_version(client, run_id: str) -> str:
    """The ``data/`` version of a run: its own tag, else that of its last stage run that versioned data."""
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own exception per store
        raise EagrlError(f"no MLflow run {run_id!r} in {client.tracking_uri}: {exc}") from None
    if VERSION_TAG in run.data.tags:
        return run.data.tags[VERSION_TAG]
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    tagged = [c for c in children if VERSION_TAG in c.data.tags]
    if not tagged:
        raise EagrlError(f"MLflow run {run_id} and its stage runs carry no {VERSION_TAG} tag: "
                         "it versioned no data (tracking.dvc off, or it failed before the prepare stage)")
    last = max(tagged, key=lambda c: (c.info.end_time or 0, c.info.start_time or 0))
    return last.data.tags[VERSION_TAG]


def checkout_version(md5: str, workspace: str | Path, remote_url: str | None = None, dest: str | Path | None = None,
                     force: bool = False, label: str | None = None) -> Checkout:
    """Materialise DVC version ``md5`` of ``data/`` (see the module docstring for where it goes)."""
    from dvc.repo import Repo

    ws = Path(workspace).resolve()
    _quiet_env(ws)
    logging.getLogger("dvc").setLevel(logging.WARNING)
    remote = remote_url or str(ws / LOCAL_REMOTE_DIR)
    target = ws / "data" if force else Path(dest or ws / "checkouts" / (label or md5.removesuffix(".dir"))).resolve()
    if not force and target.exists() and any(target.iterdir()):
        raise EagrlError(f"{target} already holds files: choose another --into, or --force to replace the "
                         "workspace's data/ (after versioning it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".eagrl-checkout-", dir=target.parent))  # same filesystem: rename
    try:
        Repo.init(str(scratch), no_scm=True)
        repo = Repo(str(scratch))
        with repo.config.edit() as conf:  # share the workspace's cache: nothing is copied twice
            conf["cache"]["dir"] = str(ws / ".dvc" / "cache")
            conf["remote"]["storage"] = {"url": remote}
            conf["core"]["remote"] = "storage"
        (scratch / "data.dvc").write_text(yaml.safe_dump({"outs": [{"md5": md5, "hash": "md5", "path": "data"}]}))
        try:
            repo.pull()
        except Exception as exc:  # DVC's own errors are many; name the version and the remote
            raise EagrlError(f"DVC could not restore data version {md5} from the cache of {ws} or the remote "
                             f"{remote}: {exc}") from exc
        previous = None
        if force:
            previous = DataStore(ws, remote_url).commit()["dvc_data_md5"] if (ws / "data").is_dir() else None
            old = scratch / "replaced"
            if target.exists():
                target.rename(old)
            (scratch / "data").rename(target)
            DataStore(ws, remote_url).commit()  # data.dvc now pins the restored version
        else:
            (scratch / "data").rename(target)
        return Checkout(label or md5, md5, target, previous)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
