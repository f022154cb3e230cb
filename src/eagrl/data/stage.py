"""The data stages: ``validate`` (the Great Expectations gate) and ``prepare`` (version the raw import and
the cohort with DVC). Both log to MLflow and leave ``DIR/<stage>/{metrics,status}.json``.

Nothing is written to the versioned workspace (``data/``, ``data.dvc``) unless validation passed, and a
cohort is replaced atomically, so a bad input never damages what is already stored.
"""
from __future__ import annotations

import shutil
import stat
import tempfile
from pathlib import Path

from eagrl.config import Config
from eagrl.data.cohort import Cohort
from eagrl.data.sources import get_source
from eagrl.data.validation import validate_source
from eagrl.errors import DataError, ValidationFailed
from eagrl.stage import StageResult, stage_contract, stage_dir
from eagrl.tracking.dvc_store import DataStore, tree_md5
from eagrl.tracking.mlflow_run import log_metrics, stage_run
from eagrl.workspace import Workspace


def source_path(cfg: Config) -> Path:
    """The folder the source is read from: data_path, else a pulled copy in the workspace, else the default."""
    if cfg.data.data_path:
        return Path(cfg.data.data_path)
    pulled = Workspace.of(cfg).raw_dir()
    return pulled if pulled.exists() else get_source(cfg.data.dataset).default_path()


@stage_contract("validate", ("data", "validation"), lambda cfg, a: [source_path(cfg)])
def validate(cfg: Config, out_dir: str | Path, parent_run_id: str | None = None,
             cohort_out: str | Path | None = None) -> StageResult:
    """Run the validation gates; write the HTML report; on success optionally save the validated cohort.

    Raises :class:`ValidationFailed` (with the report path) when an error-level check fails.
    """
    out = stage_dir(out_dir, "validate")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_path": str(source_path(cfg))})})
    with stage_run(cfg, "validate", parent_run_id) as run:
        report, cohort = validate_source(cfg)
        html_path = report.to_html(out / "report.html")
        report.to_json(out / "report.json")
        import mlflow

        mlflow.log_artifact(str(html_path))
        metrics = report.metrics()
        if cohort is not None:
            metrics.update(cohort.statistics())
        log_metrics(metrics)
        result = StageResult("validate", metrics=metrics, mlflow_run_id=run.info.run_id,
                             message=report.summary_line(), outputs={"report": str(html_path)})
        if not report.passed:
            result.status = "failed"
            result.write(out_dir)
            mlflow.set_tag("eagrl.status", "failed")
            raise ValidationFailed(f"{report.summary_line()} — report: {html_path}", str(html_path))
        if cohort_out is not None:
            cohort.save(cohort_out)
            result.outputs["cohort"] = str(cohort_out)
    result.write(out_dir)
    return result


@stage_contract("prepare", ("data", "validation", "tracking"), lambda cfg, a: [source_path(cfg)])
def prepare(cfg: Config, out_dir: str | Path, parent_run_id: str | None = None,
            validated_cohort: str | Path | None = None) -> StageResult:
    """Store the raw import and the cohort under ``<workspace>/data`` and version both with DVC.

    ``validated_cohort`` is the cohort the validate stage saved; without it (CLI use) validation runs here
    first, so nothing unvalidated is ever versioned.
    """
    out = stage_dir(out_dir, "prepare")
    src = source_path(cfg)
    if validated_cohort is None:
        validated_cohort = out / "validated-cohort"
        validate(cfg, out_dir, parent_run_id, cohort_out=validated_cohort)
    cohort = Cohort.load(validated_cohort)

    ws = Workspace.of(cfg)
    raw_dir, cohort_dir = ws.raw_dir(), ws.cohort_dir
    with stage_run(cfg, "prepare", parent_run_id) as run:
        if src.resolve() != raw_dir.resolve():
            _replace_dir(src, raw_dir, copy=True)
        _replace_dir(Path(validated_cohort), cohort_dir, copy=True)
        versions = {"raw_md5": tree_md5(raw_dir), "cohort_md5": tree_md5(cohort_dir)}
        if cfg.tracking.dvc:
            versions.update(DataStore(ws.root, cfg.tracking.dvc_remote).commit())
        import mlflow

        mlflow.set_tags({f"eagrl.{k}": v for k, v in versions.items()})
        mlflow.log_dict(cohort.meta, "cohort_meta.json")
        metrics = cohort.statistics()
        log_metrics(metrics)
        result = StageResult("prepare", metrics=metrics, mlflow_run_id=run.info.run_id,
                             message=f"cohort {ws.name}: {metrics['n_stays']} stays -> {cohort_dir}",
                             outputs={"cohort": str(cohort_dir), "raw": str(raw_dir), **versions})
    result.write(out_dir)
    return result


def _replace_dir(src: Path, dest: Path, copy: bool) -> None:
    """Put ``src``'s content at ``dest`` in one rename, so a reader never sees a half-written folder.

    A copy that fails (a full or read-only disk) removes what it staged and leaves ``dest`` as it was.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    except OSError as exc:
        raise DataError(f"cannot write {dest.parent} ({exc.strerror or exc}); nothing was changed") from None
    try:
        staged = tmp / "new"
        if src.is_dir():
            shutil.copytree(src, staged)
        else:
            staged.mkdir()
            shutil.copy2(src, staged / src.name)
        for p in (staged, *staged.rglob("*")):  # a read-only source (a shared data mount) gives a read-only
            p.chmod(p.stat().st_mode | stat.S_IWUSR)  # copy, which only root could rename, or replace later
        old = tmp / "old"
        if dest.exists():
            dest.rename(old)
        try:
            staged.rename(dest)
        except OSError:
            if old.exists() and not dest.exists():
                old.rename(dest)  # put the previous version back
            raise
    except (OSError, shutil.Error) as exc:
        raise DataError(f"cannot write {dest} ({getattr(exc, 'strerror', None) or exc}); the previous version "
                        f"is kept") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
