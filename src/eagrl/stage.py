"""What every stage shares: its result record and the files it leaves in ``DIR/<stage>/``.

A stage is a plain function ``f(cfg, out_dir, ...) -> StageResult``; the CLI, the KFP component and the
tests all call it. It writes ``DIR/<stage>/metrics.json`` (a flat object of numbers and two-number
intervals) and ``DIR/<stage>/status.json`` (status, message, outputs, MLflow run id), so ``eagrl run`` can
assemble ``summary.json`` from any executor, local or remote.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path


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


def records_failure(stage: str):
    """Decorate a stage function ``f(cfg, out_dir, ...)``: any exception leaves a failed status.json first."""
    import functools

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(cfg, out_dir, *args, **kwargs):
            try:
                return fn(cfg, out_dir, *args, **kwargs)
            except Exception as exc:
                previous = StageResult.read(out_dir, stage)
                if previous is None or previous.status != "failed":
                    StageResult(stage, status="failed", message=f"{type(exc).__name__}: {exc}").write(out_dir)
                raise

        return wrapper

    return deco


def stage_dir(out_dir: str | Path, stage: str) -> Path:
    d = Path(out_dir) / stage
    d.mkdir(parents=True, exist_ok=True)
    return d


def metrics_json(metrics: dict) -> dict:
    """Keep numbers and two-number intervals only (the metrics.json contract)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, (int, float)) and math.isfinite(float(v)):
            out[k] = v
        elif isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
            out[k] = [float(v[0]), float(v[1])]
    return out
