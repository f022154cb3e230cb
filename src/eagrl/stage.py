"""What every stage shares: its result record and the files it leaves in ``DIR/<stage>/``.

A stage is a plain function ``f(cfg, out_dir, ...) -> StageResult``; the CLI, the KFP component and the
tests all call it. It writes ``DIR/<stage>/metrics.json`` (a flat object of numbers and two-number
intervals) and ``DIR/<stage>/status.json`` (status, message, outputs, MLflow run id), so ``eagrl run`` can
assemble ``summary.json`` from any executor, local or remote.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from eagrl.metrics import metrics_json


def progress_logging() -> None:
    """Long stages log their progress (SFT and RL steps, search and scoring counts) at INFO: shown on an interactive
    terminal, or wherever ``EAGRL_LOG_LEVEL`` (e.g. INFO) asks for it; scripts and tests keep one line on failure.
    Every stage calls it as it starts, so a KFP component, a process of its own, logs as the CLI does (``eagrl run``
    asks its components for INFO: their lines go to ``pipeline.log``). Idempotent: one handler at most."""
    import logging
    import os
    import sys

    level = os.environ.get("EAGRL_LOG_LEVEL") or ("INFO" if sys.stderr.isatty() else "")
    if level and not logging.getLogger("eagrl").handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        logging.getLogger("eagrl").addHandler(handler)
        logging.getLogger("eagrl").setLevel(level.upper())


@dataclass
class StageResult:
    stage: str
    status: str = "succeeded"  # succeeded | failed
    message: str = ""
    metrics: dict = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    mlflow_run_id: str | None = None

    def write(self, out_dir: str | Path) -> Path:
        d = Path(out_dir) / self.stage
        d.mkdir(parents=True, exist_ok=True)
        (d / "metrics.json").write_text(json.dumps(metrics_json(self.metrics), indent=1, sort_keys=True))
        status = {k: v for k, v in asdict(self).items() if k != "metrics"}
        (d / "status.json").write_text(json.dumps(status, indent=1, sort_keys=True))
        return d

    @classmethod
    def read(cls, out_dir: str | Path, stage: str) -> "StageResult | None":
        d = Path(out_dir) / stage
        if not (d / "status.json").is_file():
            return None
        status = json.loads((d / "status.json").read_text())
        metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else {}
        return cls(metrics=metrics, **status)


def stage_contract(stage: str, sections: tuple[str, ...] | None = None, inputs=None, reuse: bool = True,
                   state=None, resolve=None):
    """Decorate a stage function ``f(cfg, out_dir, ...)``: the stage contract every stage shares.

    * Inputs, computed once: ``resolve(cfg, out_dir, args)`` returns the value of each input argument the caller
      left out (the workspace's cohort, the SFT stage's adapter, the registry version "latest" names now); the
      stage is called with those values and they are what the fingerprint digests, so what is hashed is what is
      read. ``inputs(cfg, args)`` names what a stage reads that is no argument (the raw source files).
    * Reuse: with ``cfg.pipeline.reuse`` on, a stage whose fingerprint (its config ``sections``, default the
      whole config; the content of every existing path among its arguments and of the paths ``inputs(args)``
      names; the eagrl library's code) matches the one recorded when it last
      succeeded in ``out_dir``, and whose recorded outputs are unchanged on disk, is not recomputed: its
      result is restored (see :func:`reuse_finished`).
    * Failure: any exception leaves a failed status.json first.

    * Live state: ``state(cfg, args)`` describes what a stage's result depends on outside its inputs (promotion:
      the served model's versions and who holds its alias in the registry). It is folded into the fingerprint,
      and the fingerprint is recorded with the state *as the stage left it*: a rerun reuses the result while the
      registry is as this stage left it (its own promotion included), and decides again once anything else
      changed it (another candidate promoted, a new registry).

    Every stage records a fingerprint when it succeeds (``OUT/<stage>/fingerprint.json``), so a run killed
    anywhere reruns only what had not finished. ``reuse=False``: never restored nor recorded (kept for stages
    outside the pipeline that must always recompute; no pipeline stage uses it).

    Arguments named ``*_out`` are paths the caller wants an output copied to (``cohort_out`` gets
    ``outputs["cohort"]``); ``parent_run_id`` is not an input.
    """
    import functools
    import inspect

    def deco(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(cfg, out_dir, *args, **kwargs):
            progress_logging()
            key = None
            try:
                bound = signature.bind(cfg, out_dir, *args, **kwargs)
                bound.apply_defaults()
                if resolve is not None:
                    bound.arguments.update(resolve(cfg, out_dir, dict(list(bound.arguments.items())[2:])))
                named = dict(list(bound.arguments.items())[2:])
                if cfg.pipeline.reuse and reuse:
                    extra = inputs(cfg, named) if inputs else ()
                    key = fingerprint(stage, cfg, named, sections, extra, fn, state(cfg, named) if state else None)
                    reused = reuse_finished(stage, cfg, out_dir, key, named)
                    if reused is not None:
                        return reused
                result = fn(*bound.args, **bound.kwargs)
            except Exception as exc:
                previous = StageResult.read(out_dir, stage)
                if previous is None or previous.status != "failed":
                    StageResult(stage, status="failed", message=f"{type(exc).__name__}: {exc}").write(out_dir)
                raise
            if key is not None and result.status == "succeeded":
                if state:  # the state as this stage left it: what a rerun must find to reuse the result
                    key = fingerprint(stage, cfg, named, sections, extra, fn, state(cfg, named))
                record_finished(out_dir, stage, key, result)
            return result

        return wrapper

    return deco


# ---------------------------------------------------------------- reuse of finished stages (content hashes)
# KFP's local runner has no cache and a cluster's cache does not survive a changed input path, so a stage
# remembers what it computed from what: OUT/<stage>/fingerprint.json, written only after it succeeded.
FINGERPRINT = "fingerprint.json"
_NOT_INPUTS = {"tracking.mlflow_tracking_uri", "tracking.experiment", "profile"}  # where it logs, not what


def path_md5(path: str | Path) -> str:
    """Content digest of a file or a folder (DVC's folder digest, so it matches the eagrl.*_md5 tags)."""
    import hashlib

    from eagrl.tracking.dvc_store import tree_md5

    p = Path(path)
    if p.is_dir():
        return tree_md5(p)
    h = hashlib.md5()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_path(value) -> bool:
    return isinstance(value, (str, Path)) and str(value) != "" and len(str(value)) < 4096 and Path(value).exists()


def fingerprint(stage: str, cfg, named: dict, sections, extra_inputs, fn, state=None) -> str:
    """What a stage's result depends on: config values, input contents, live ``state`` (JSON-able; see
    :func:`stage_contract`), its code and eagrl's version."""
    import hashlib

    import eagrl

    flat = {k: v for k, v in cfg.to_flat().items()
            if k not in _NOT_INPUTS and not k.startswith(("pipeline.", "cluster.", "serve."))}
    if sections is not None:
        flat = {k: v for k, v in flat.items() if k.split(".")[0] in sections}
    args = {}
    for name, value in named.items():
        if name == "parent_run_id" or name.endswith("_out"):
            continue
        args[name] = path_md5(value) if _is_path(value) else repr(value)
    extra = sorted(path_md5(p) for p in extra_inputs if p is not None and Path(p).exists())
    code = _library_md5()  # all of eagrl: a stage's result also depends on the shared code it calls (llm, data, ...)
    parts = {"stage": stage, "config": flat, "args": args, "inputs": extra, "code": code, "version": eagrl.__version__}
    if state is not None:  # only then: the keys of stages without live state stay as they were
        parts["state"] = state
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _library_md5() -> str:
    import hashlib

    import eagrl

    root = Path(eagrl.__file__).parent
    return hashlib.md5(b"".join(p.read_bytes() for p in sorted(root.rglob("*.py")))).hexdigest()


def record_finished(out_dir: str | Path, stage: str, key: str, result: StageResult) -> None:
    """Remember a succeeded stage: its fingerprint, its result and the digest of each output path."""
    outputs = {k: path_md5(v) for k, v in result.outputs.items() if _is_path(v)}
    record = {"fingerprint": key, "outputs_md5": outputs, "result": asdict(result)}
    _write_atomic(stage_dir(out_dir, stage) / FINGERPRINT, record)


def _write_atomic(path: Path, record: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str))
    tmp.replace(path)  # atomic: a kill never leaves a half-written record


def reuse_finished(stage: str, cfg, out_dir: str | Path, key: str, named: dict) -> "StageResult | None":
    """The recorded result if ``key`` matches and every recorded output is intact; else None (recompute).

    A reused stage still copies its outputs where the caller asked (``*_out``), logs a nested MLflow run
    tagged ``eagrl.reused_from`` with the original run's metrics and ``eagrl.*`` tags, and writes its
    status.json/metrics.json, so the run's summary and MLflow describe it like any other.
    """
    import shutil

    path = Path(out_dir) / stage / FINGERPRINT
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if record.get("fingerprint") != key:
        return None
    old = StageResult(**record["result"])
    if any(name.endswith("_out") and dest is not None and not old.outputs.get(name[:-4])
           for name, dest in named.items()):
        return None  # the caller wants an output the recorded run did not keep (validate run without cohort_out)
    for name, md5 in record.get("outputs_md5", {}).items():
        target = old.outputs.get(name)
        if not target or not Path(target).exists() or path_md5(target) != md5:
            return None
    for name, dest in named.items():
        if name.endswith("_out") and dest is not None and old.outputs.get(name[:-4]):
            src, dest = Path(old.outputs[name[:-4]]), Path(dest)
            if src.resolve() != dest.resolve():
                if src.is_dir():
                    shutil.copytree(src, dest, dirs_exist_ok=True)
                else:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dest)
            old.outputs[name[:-4]] = str(dest)
    if any(name.endswith("_out") and dest is not None for name, dest in named.items()):
        record["result"]["outputs"] = old.outputs  # the copies: older pipeline roots may now be cleaned
        _write_atomic(path, record)
    run_id = _log_reused(cfg, stage, old, named.get("parent_run_id"))
    result = StageResult(stage, "succeeded", f"reused (inputs unchanged): {old.message}", old.metrics, old.outputs,
                         run_id)
    result.write(out_dir)
    return result


def _log_reused(cfg, stage: str, old: StageResult, parent_run_id: str | None) -> str:
    import mlflow

    from eagrl.tracking.mlflow_run import log_metrics, stage_run, tracking_uri

    tags = {}
    if old.mlflow_run_id:
        try:
            client = mlflow.MlflowClient(tracking_uri(cfg))
            tags = {k: v for k, v in client.get_run(old.mlflow_run_id).data.tags.items()
                    if k.startswith("eagrl.") and k != "eagrl.stage"}
        except Exception:  # noqa: BLE001 - the original run may live in another store; its metrics are here
            tags = {}
    with stage_run(cfg, stage, parent_run_id) as run:
        mlflow.set_tags({**tags, "eagrl.reused_from": old.mlflow_run_id or ""})
        log_metrics(old.metrics)
    return run.info.run_id


def stage_dir(out_dir: str | Path, stage: str) -> Path:
    d = Path(out_dir) / stage
    d.mkdir(parents=True, exist_ok=True)
    return d
