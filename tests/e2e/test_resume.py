"""Resumability: a finished stage is reused (content hashes), and a run killed anywhere finishes the same.

The fast tests exercise the stage contract (``eagrl.stage.stage_contract``) on a toy stage; the slow ones
SIGKILL ``eagrl run --profile smoke`` (the whole process group, as a node loss would) at seeded random
moments, rerun it in the same workspace and compare every output with an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eagrl.config import load_config
from eagrl.stage import FINGERPRINT, StageResult, path_md5, stage_contract, stage_dir
from pipelines.eagrl_pipeline import STAGES

# ------------------------------------------------------------------ the contract, on a toy stage
CALLS: list[str] = []


@stage_contract("toy", sections=("data",))
def toy_stage(cfg, out_dir, parent_run_id=None, source=None, copy_out=None) -> StageResult:
    """Doubles the number in ``source`` into ``OUT/toy/result.txt``; fails on a negative number."""
    CALLS.append(str(source))
    value = int(Path(source).read_text())
    if value < 0:
        raise ValueError(f"negative input {value}")
    out = stage_dir(out_dir, "toy") / "result.txt"
    out.write_text(str(2 * value))
    if copy_out:
        Path(copy_out).write_text(str(2 * value))
    from eagrl.tracking.mlflow_run import stage_run

    with stage_run(cfg, "toy", parent_run_id) as run:
        result = StageResult("toy", metrics={"value": 2 * value}, outputs={"copy": str(out), "result": str(out)},
                             mlflow_run_id=run.info.run_id)
    result.write(out_dir)
    return result


@pytest.fixture()
def toy(tmp_path):
    CALLS.clear()
    cfg = load_config("smoke", {"workspace": str(tmp_path),
                                "tracking.mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    source = tmp_path / "source.txt"
    source.write_text("21")
    return cfg, tmp_path / "out", source


def test_a_finished_stage_is_reused_not_recomputed(toy):
    cfg, out, source = toy
    first = toy_stage(cfg, out, source=source)
    assert CALLS == [str(source)] and first.metrics == {"value": 42}
    second = toy_stage(cfg, out, source=source, copy_out=out / "elsewhere.txt")
    assert len(CALLS) == 1, "an unchanged stage ran again"
    assert second.message.startswith("reused") and second.metrics == first.metrics
    assert (out / "elsewhere.txt").read_text() == "42", "a reused stage still delivers its outputs"
    assert StageResult.read(out, "toy").status == "succeeded"

    import mlflow

    run = mlflow.MlflowClient(cfg.tracking.mlflow_tracking_uri).get_run(second.mlflow_run_id)
    assert run.data.tags["eagrl.reused_from"] == first.mlflow_run_id and run.data.metrics["value"] == 42


@pytest.mark.parametrize("change", ["input content", "config section", "output tampered", "reuse off"])
def test_a_changed_input_or_output_recomputes(toy, change):
    cfg, out, source = toy
    toy_stage(cfg, out, source=source)
    if change == "input content":
        source.write_text("5")
    elif change == "config section":
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"seed": 7})})
    elif change == "output tampered":
        (out / "toy" / "result.txt").write_text("999")
    else:
        cfg.pipeline.reuse = False
    result = toy_stage(cfg, out, source=source)
    assert len(CALLS) == 2 and not result.message.startswith("reused")
    assert (out / "toy" / "result.txt").read_text() == str(2 * int(source.read_text()))


def test_a_setting_outside_the_stage_sections_does_not_recompute(toy):
    cfg, out, source = toy
    toy_stage(cfg, out, source=source)
    cfg.expert.hidden = 8  # not in the toy stage's sections
    assert toy_stage(cfg, out, source=source).message.startswith("reused") and len(CALLS) == 1


def test_a_failed_stage_is_never_reused(toy):
    cfg, out, source = toy
    source.write_text("-1")
    with pytest.raises(ValueError):
        toy_stage(cfg, out, source=source)
    assert not (out / "toy" / FINGERPRINT).exists() and StageResult.read(out, "toy").status == "failed"
    with pytest.raises(ValueError):
        toy_stage(cfg, out, source=source)
    assert len(CALLS) == 2


@stage_contract("toy-live", sections=("data",), state=lambda cfg, a: Path(a["live"]).read_text())
def toy_live_stage(cfg, out_dir, live=None) -> StageResult:
    """Depends on live state outside its inputs (like promotion on the registry): counts the calls in ``live``."""
    CALLS.append("live")
    count = int(Path(live).read_text()) + 1
    Path(live).write_text(str(count))  # changes the state it depends on, as a promotion moves the alias
    result = StageResult("toy-live", metrics={"count": count})
    result.write(out_dir)
    return result


def test_a_stage_on_live_state_is_reused_while_the_state_is_as_it_left_it(toy, tmp_path):
    cfg, out, _ = toy
    live = tmp_path / "live.txt"
    live.write_text("0")
    assert toy_live_stage(cfg, out, live=str(live)).metrics == {"count": 1}
    again = toy_live_stage(cfg, out, live=str(live))
    assert again.message.startswith("reused") and again.metrics == {"count": 1} and CALLS == ["live"]
    live.write_text("5")  # someone else changed it: decided again
    assert toy_live_stage(cfg, out, live=str(live)).metrics == {"count": 6} and CALLS == ["live", "live"]
    assert json.loads((out / "toy-live" / FINGERPRINT).read_text())["result"]["metrics"] == {"count": 6}


# ------------------------------------------------------------------ killing the smoke pipeline
def _start(workspace: Path, data: Path) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "eagrl"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen([str(exe), "run", "--profile", "smoke", "--data-path", str(data), "--workspace",
                             str(workspace), "--out", str(workspace / "out")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # its own process group


def _finish(workspace: Path, data: Path) -> tuple[dict, list[float]]:
    """Run to the end; return the summary and when (seconds after the start) each stage finished."""
    t0 = time.time()
    proc = _start(workspace, data)
    _, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, err[-3000:]
    ends = [(workspace / "out" / s / FINGERPRINT).stat().st_mtime - t0 for s in STAGES]
    return json.loads((workspace / "out" / "summary.json").read_text()), ends


def kill_point(seed: int, ends: list[float]) -> tuple[int, float]:
    """A seeded random moment of the uninterrupted run, as (stage index, seconds into that stage), so the kill
    lands in the same stage however fast the machine runs the earlier ones."""
    t = random.Random(seed).uniform(0.05, 0.95) * ends[-1]
    k = next(i for i, end in enumerate(ends) if t < end)
    return k, t - (ends[k - 1] if k else 0.0)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 1200) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, f"the run ended before {path} appeared"
        time.sleep(0.1)


TIMINGS = ("second", "per_minute", "_per_s")  # seconds, seconds_per_patient, tokens_per_second, ...
ABOUT_THE_PROCESS = {"n_resumed"}  # how many stays this process found already searched: the interruption itself


def outputs_of(workspace: Path) -> dict:
    """Everything a run produced that must not depend on interruptions (timings excluded)."""
    out, name = workspace / "out", "mimic-iv-demo-readmission_30d"
    found = {}
    for stage in STAGES:
        metrics = json.loads((out / stage / "metrics.json").read_text())
        found[f"{stage}.metrics"] = {k: v for k, v in metrics.items()
                                     if not any(t in k for t in TIMINGS) and k not in ABOUT_THE_PROCESS}
    prepare = StageResult.read(out, "prepare").outputs
    found["cohort_md5"] = prepare["cohort_md5"]
    found["cohort_tree"] = path_md5(workspace / "data" / "cohorts" / name)
    found["attention_md5"] = path_md5(workspace / "data" / "expert" / name / "attention.parquet")
    found["expert_model_md5"] = path_md5(workspace / "data" / "expert" / name / "model.pt")
    found["zeroshot_predictions_md5"] = path_md5(out / "zeroshot" / "pqd" / "predictions.csv")
    found["trajectories_md5"] = path_md5(StageResult.read(out, "mcts").outputs["selected"])
    promotion = json.loads((out / "promote" / "promotion.json").read_text())  # the decision and why
    found["promotion"] = {k: promotion[k] for k in ("promoted", "reason", "version", "candidate_source")}
    return found


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shared_data):
    ws = tmp_path_factory.mktemp("uninterrupted")
    summary, ends = _finish(ws, shared_data / "mimic-iv-demo-clif")
    assert summary["status"] == "succeeded"
    return outputs_of(ws), ends


@pytest.mark.slow
@pytest.mark.parametrize("point", [0, 1, 2])
def test_killed_at_a_random_point_the_rerun_finishes_with_the_same_outputs(point, uninterrupted, tmp_path,
                                                                          monkeypatch, shared_data):
    reference, ends = uninterrupted
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))
    data = shared_data / "mimic-iv-demo-clif"
    ws = tmp_path / "ws"
    ws.mkdir()
    k, into = kill_point(1000 + point, ends)  # seeded: the same three points every time
    where = f"{into:.1f} s into {STAGES[k]} (of {ends[k] - (ends[k - 1] if k else 0):.1f} s uninterrupted)"
    for attempt in range(3):  # the machine is shared: if this run outpaced the kill, start over and kill sooner
        shutil.rmtree(ws, ignore_errors=True)
        ws.mkdir()
        t0 = time.time()
        proc = _start(ws, data)
        pace = 1.0
        if k:
            _wait_for(ws / "out" / STAGES[k - 1] / FINGERPRINT, proc)
            pace = (time.time() - t0) / ends[k - 1]  # this run's speed relative to the uninterrupted one
        time.sleep(into * pace / 2 ** attempt)
        if proc.poll() is None:
            break
    assert proc.poll() is None, f"the run ended before the kill {where}, three times"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and every KFP task subprocess, mid-write
    proc.wait()
    finished = {s for s in STAGES if (ws / "out" / s / FINGERPRINT).is_file()}
    stored = {s: json.loads((ws / "out" / s / FINGERPRINT).read_text())["result"] for s in finished}
    print(f"killed {where}; finished before: {[s for s in STAGES if s in finished]}")  # shown with -s / -rP

    summary, _ = _finish(ws, data)

    assert summary["status"] == "succeeded"
    by_stage = {s["stage"]: s for s in summary["stages"]}
    for stage in finished:  # nothing finished is recomputed ...
        assert by_stage[stage]["message"].startswith("reused"), (stage, where)
    for stage in set(STAGES) - finished:
        assert not by_stage[stage]["message"].startswith("reused"), (stage, where)
    assert outputs_of(ws) == reference, f"killed {where}"

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("eagrl-smoke").experiment_id, max_results=500)
    assert not [r for r in runs if r.info.status == "RUNNING"], "the killed run's MLflow runs stay open"
    for stage, result in stored.items():  # ... and nothing stored is lost: the finished runs and versions remain
        assert client.get_run(result["mlflow_run_id"]).info.status == "FINISHED"
        if "dvc_data_md5" in result["outputs"]:
            md5 = result["outputs"]["dvc_data_md5"]
            assert (ws / ".dvc-storage" / "files" / "md5" / md5[:2] / md5[2:]).is_file(), stage
