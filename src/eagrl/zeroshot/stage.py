"""The zero-shot baselines as a pipeline stage: the base policy model, prompted, on the cohort's test split.

``zeroshot_stage(cfg, out_dir)`` scores every style in ``cfg.zeroshot.styles`` (P_QD, vanilla,
think-then-answer) with one loaded model, writes ``DIR/zeroshot/<style>/`` (metrics, predictions,
responses), logs all of it to one MLflow run, and reports ``<style>_test_auroc`` etc.; the P_QD figures
are also the stage's headline ``test_auroc``/``test_auprc``.
"""
from __future__ import annotations

from pathlib import Path

from eagrl.config import Config
from eagrl.data.cohort import Cohort
from eagrl.stage import StageResult, stage_contract, stage_dir
from eagrl.tracking.mlflow_run import log_metrics, nested_run, stage_run
from eagrl.workspace import model_config, workspace_inputs


@stage_contract("zeroshot", ("data", "model", "generation", "zeroshot"),
                 resolve=workspace_inputs)
def zeroshot_stage(cfg: Config, out_dir: str | Path, parent_run_id: str | None = None,
                   cohort_path: str | Path | None = None) -> StageResult:
    import mlflow

    from eagrl.llm.backends import make_backend
    from eagrl.scoring.keys import scoring_key, tag_scored
    from eagrl.scoring.policy import evaluate_zero_shot
    from eagrl.tracking.dvc_store import tree_md5

    out = stage_dir(out_dir, "zeroshot")
    source = Path(cohort_path)
    cohort = Cohort.load(source)
    cohort_md5 = tree_md5(source)
    mcfg = model_config(cfg)
    metrics: dict = {}
    with stage_run(cfg, "zeroshot", parent_run_id) as run:
        backend = make_backend(mcfg, cfg.generation)
        for style in cfg.zeroshot.styles:
            gen = cfg.generation.model_copy(update={"prompt_style": style})
            with nested_run(f"zeroshot-{style}"):
                m = evaluate_zero_shot(cohort, out / style, mcfg, gen, split=cfg.zeroshot.split,
                                       max_stays=cfg.zeroshot.max_stays, n_boot=cfg.zeroshot.n_boot,
                                       seed=cfg.evaluate.seed, backend=backend)
                mlflow.log_artifacts(str(out / style), artifact_path=style)
                tag_scored(scoring_key(mcfg, gen, cohort_md5, cfg.zeroshot.split), style)  # for the evaluation
            metrics.update({f"{style}_{k}": v for k, v in m.items()})
            if style == "pqd":
                metrics.update(m)
        log_metrics(metrics)
        split = cfg.zeroshot.split
        head = cfg.zeroshot.styles[0]
        auroc, ci = metrics.get(f"{head}_{split}_auroc"), metrics.get(f"{head}_{split}_auroc_ci")
        message = (f"{mcfg.source} zero-shot {head}: {split} AUROC "
                   + (f"{auroc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if auroc is not None and ci else "undefined")
                   + f", well-formed {metrics.get(f'{head}_{split}_well_formed_rate', 0):.0%}")
        result = StageResult("zeroshot", metrics=metrics, mlflow_run_id=run.info.run_id, message=message,
                             outputs={style: str(out / style) for style in cfg.zeroshot.styles})
    result.write(out_dir)
    return result
