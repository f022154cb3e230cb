"""Run the KFP pipeline on this machine (KFP's SubprocessRunner) and assemble ``summary.json``."""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

from eagrl.config import Config
from eagrl.stage import StageResult
from eagrl.tracking.mlflow_run import end_run, start_parent_run


def run_local(cfg: Config, out_dir: str | Path) -> dict:
    """Execute every stage in order through KFP's local runner; never raises on a failed stage.

    Returns the summary (also written to ``OUT/summary.json`` and logged to the parent MLflow run).
    """
    from kfp import local

    from pipelines.eagrl_pipeline import STAGES, eagrl_pipeline

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stage in STAGES:  # a summary must only ever describe this run
        for name in ("status.json", "metrics.json"):
            (out / stage / name).unlink(missing_ok=True)
    # Components run as `python -m kfp...` subprocesses: make sure that is this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    # KFP's executor logs to its stdout, a pipe here, so Python buffers it in 8 KB blocks: unbuffered, a stage's
    # progress lines (SFT and RL steps, search counts) reach pipeline.log as they are written, not when it ends.
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    _close_interrupted(cfg, out)
    parent = start_parent_run(cfg)
    (out / RUN_RECORD).write_text(json.dumps({"mlflow_run_id": parent, "pid": os.getpid()}))
    local.init(runner=local.SubprocessRunner(use_venv=False),
               pipeline_root=str(Path(cfg.workspace) / cfg.pipeline.pipeline_root), raise_on_error=True)
    started = time.time()
    error = ""
    log_path = out / "pipeline.log"
    # the components log their progress (eagrl.stage.progress_logging) into pipeline.log, at INFO unless asked otherwise
    with _StageProgress(out, STAGES, log_path), pipeline_log(log_path), \
            _component_env(EAGRL_LOG_LEVEL=os.environ.get("EAGRL_LOG_LEVEL") or "INFO"):
        try:
            eagrl_pipeline(profile=cfg.profile, overrides=json.dumps(cfg.to_flat()), out_dir=str(out),
                           parent_run_id=parent)
        except Exception as exc:  # noqa: BLE001 - a failed task: its own status.json says why
            error = str(exc)
    stages = []
    for stage in STAGES:
        res = StageResult.read(out, stage)
        stages.append({"stage": stage, "status": "not run", "metrics": {}} if res is None else
                      {"stage": stage, "status": res.status, "message": res.message, "metrics": res.metrics,
                       "outputs": res.outputs, "mlflow_run_id": res.mlflow_run_id})
    failed = [s for s in stages if s["status"] != "succeeded"]
    first_bad = next((s for s in stages if s["status"] == "failed"), failed[0] if failed else None)
    message = "all stages succeeded"
    if first_bad:
        message = (
            first_bad.get("message")
            or f"stage {first_bad['stage']} did not run: {error.splitlines()[0] if error else ''}"
        )
    summary = {"status": "failed" if failed else "succeeded", "message": message, "mlflow_run_id": parent,
               "profile": cfg.profile, "dataset": cfg.data.dataset, "task": cfg.data.task,
               "seconds": round(time.time() - started, 1), "stages": stages}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    _close_parent(cfg, parent, summary, out / "summary.json")
    (out / RUN_RECORD).unlink(missing_ok=True)
    return summary


@contextlib.contextmanager
def pipeline_log(path: Path):
    """This process's stdout and stderr into ``path``, line by line: KFP's local runner prints each line its
    components write, and a block-buffered file would hold the last 8 KB of them (minutes of SFT or RL steps) until
    the run ends."""
    with open(path, "w", buffering=1, encoding="utf-8") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        yield log


@contextlib.contextmanager
def _component_env(**values: str):
    """Variables the component subprocesses inherit (KFP's local runner passes them this process's environment), set
    for the pipeline's duration only."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


RUN_RECORD = ".pipeline-run.json"  # the parent MLflow run of the execution writing to OUT, while it runs


def _close_interrupted(cfg: Config, out: Path) -> None:
    """A run killed mid-way left its MLflow runs RUNNING: mark them KILLED (its finished stages are reused)."""
    import mlflow

    from eagrl.tracking.mlflow_run import tracking_uri

    record = out / RUN_RECORD
    if not record.is_file():
        return
    run_id = json.loads(record.read_text()).get("mlflow_run_id")
    client = mlflow.MlflowClient(tracking_uri(cfg))
    try:
        parent = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - recorded in another store, or deleted: nothing to close here
        return
    level, stale = [parent], []
    while level:
        stale += [r for r in level if r.info.status == "RUNNING"]
        level = [child for r in level for child in client.search_runs(
            [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{r.info.run_id}'")]
    for r in stale:
        client.set_tag(r.info.run_id, "eagrl.interrupted", "true")
        client.set_terminated(r.info.run_id, status="KILLED")
    record.unlink()


class _StageProgress:
    """Show each stage as it finishes (KFP's own verbose task logs go to OUT/pipeline.log)."""

    def __init__(self, out: Path, stages: list[str], log_path: Path):
        from rich.console import Console

        self.out, self.stages, self.log_path = out, stages, log_path
        self.console = Console(file=sys.__stderr__)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self.console.print(f"running {len(self.stages)} stages with KFP's local runner (task logs: {self.log_path})")
        self.status = self.console.status("starting")
        self.status.start()
        self.thread.start()
        return self

    def _watch(self) -> None:
        seen: set[str] = set()
        t0 = last = time.time()
        while True:
            for stage in self.stages:
                res = StageResult.read(self.out, stage) if stage not in seen else None
                if res is not None:
                    seen.add(stage)
                    mark = "[green]ok[/green]" if res.status == "succeeded" else "[red]failed[/red]"
                    mark += " (reused)" if res.message.startswith("reused") else ""
                    now = time.time()  # the stage's own time (since the previous one ended), then the run's
                    self.console.print(f"  {stage:<10} {mark}  {now - last:6.1f} s  (at {now - t0:6.1f} s)")
                    last = now
            pending = [s for s in self.stages if s not in seen]
            self.status.update(f"running {pending[0]}" if pending else "finishing")
            if self.stop.wait(0.5):
                return

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.status.stop()


def _close_parent(cfg: Config, run_id: str, summary: dict, summary_path: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    client.log_artifact(run_id, str(summary_path))
    metrics = {f"{s['stage']}.{k}": v for s in summary["stages"] for k, v in s["metrics"].items()}
    versions = {f"eagrl.{s['stage']}.{k}": v for s in summary["stages"] for k, v in (s.get("outputs") or {}).items()
                if k.endswith("md5") and v}  # the data versions, on the run the MLflow UI compares
    for key, value in versions.items():
        client.set_tag(run_id, key, value)
    end_run(cfg, run_id, "FINISHED" if summary["status"] == "succeeded" else "FAILED", metrics)
