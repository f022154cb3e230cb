"""The stage contract's inputs: resolved once, passed to the stage, and what the fingerprint digests."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from eagrl.config import build_config
from eagrl.errors import DataError
from eagrl.stage import StageResult, stage_contract


def _stage(calls: list, default: Path):
    """A stage reading one file argument that defaults to ``default`` (as a stage defaults to the workspace's
    cohort); it records the path it was given and the text it read."""

    def resolve(cfg, out_dir, given):
        if not default.exists():
            raise DataError(f"nothing at {default}: run the stage before")
        return {"source": Path(given["source"] or default)}

    @stage_contract("toy", ("data",), resolve=resolve)
    def toy(cfg, out_dir, source: str | Path | None = None) -> StageResult:
        calls.append((source, Path(source).read_text()))
        result = StageResult("toy", metrics={"n": len(calls)})
        result.write(out_dir)
        return result

    return toy


@pytest.fixture()
def cfg(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return build_config("smoke", workspace=tmp_path / "ws")


def test_the_stage_reads_what_was_resolved_and_a_changed_default_input_is_recomputed(cfg, tmp_path):
    default = tmp_path / "cohort.txt"
    default.write_text("first")
    calls: list = []
    toy = _stage(calls, default)
    out = tmp_path / "out"

    toy(cfg, out)
    assert calls == [(default, "first")]  # the default, resolved once, is the argument the stage got
    assert toy(cfg, out).message.startswith("reused")  # same content: reused
    assert len(calls) == 1

    default.write_text("second")  # the default input changed behind the caller's back: a new input
    toy(cfg, out)
    assert calls[-1] == (default, "second")

    other = tmp_path / "other.txt"
    other.write_text("second")  # a given path with the same content as the last one read: reused
    assert toy(cfg, out, source=other).message.startswith("reused") and len(calls) == 2


def test_a_finished_stage_asked_for_an_output_copy_it_never_kept_runs_again_and_writes_the_copy(cfg, tmp_path):
    """`eagrl data validate` then `eagrl data prepare` in one OUT: prepare asks validate for the cohort
    (``cohort_out``) that the first validate, run without it, never saved. Reusing that result would return
    success with nothing at the path; the stage must run again."""
    calls: list = []

    @stage_contract("toy", ("data",))
    def toy(cfg, out_dir, cohort_out: str | Path | None = None) -> StageResult:
        calls.append(cohort_out)
        result = StageResult("toy")
        if cohort_out is not None:
            Path(cohort_out).mkdir(parents=True)
            (Path(cohort_out) / "stays.txt").write_text("cohort")
            result.outputs["cohort"] = str(cohort_out)
        result.write(out_dir)
        return result

    out = tmp_path / "out"
    toy(cfg, out)
    assert toy(cfg, out).message.startswith("reused") and calls == [None]
    copy = tmp_path / "validated-cohort"
    toy(cfg, out, cohort_out=copy)
    assert calls == [None, copy]
    assert (copy / "stays.txt").read_text() == "cohort"
    again = tmp_path / "again"  # now the recorded result kept the cohort: reused, and copied where asked
    assert toy(cfg, out, cohort_out=again).message.startswith("reused") and len(calls) == 2
    assert (again / "stays.txt").read_text() == "cohort"


def test_a_failed_resolution_leaves_a_failed_status_naming_the_cause(cfg, tmp_path):
    toy = _stage([], tmp_path / "missing.txt")
    with pytest.raises(DataError, match="nothing at"):
        toy(cfg, tmp_path / "out")
    status = json.loads((tmp_path / "out" / "toy" / "status.json").read_text())
    assert status["status"] == "failed" and "missing.txt" in status["message"]


def test_a_stage_in_a_process_of_its_own_logs_its_progress_where_eagrl_log_level_asks(tmp_path):
    """A KFP component is a process of its own that calls a stage: with EAGRL_LOG_LEVEL set (``eagrl run`` sets INFO
    for its components) the stage's INFO lines reach its stderr, so pipeline.log shows a long stage's progress; unset,
    a script stays quiet."""
    import os
    import subprocess
    import sys

    script = (
        "import logging\n"
        "from eagrl.config import build_config\n"
        "from eagrl.stage import StageResult, stage_contract\n"
        "@stage_contract('toy', ('data',))\n"
        "def toy(cfg, out_dir):\n"
        "    logging.getLogger('eagrl.toy').info('toy step 3/7')\n"
        "    return StageResult('toy')\n"
        f"toy(build_config('smoke', workspace={str(tmp_path / 'ws')!r}), {str(tmp_path / 'out')!r})\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("EAGRL_LOG_LEVEL", "MLFLOW_TRACKING_URI")}
    asked = subprocess.run([sys.executable, "-c", script], env={**env, "EAGRL_LOG_LEVEL": "INFO"},
                           capture_output=True, text=True, timeout=120)
    quiet = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert asked.returncode == 0 and quiet.returncode == 0, asked.stderr[-2000:] + quiet.stderr[-2000:]
    assert "eagrl.toy: toy step 3/7" in asked.stderr and "toy step" not in quiet.stderr
