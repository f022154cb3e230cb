"""Evaluation component: the comparison table, robustness, generalisation and the HTML report."""
from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(profile: str, dataset: str, task: str, model_source: str, data_path: str, overrides: str, out_dir: str,
             parent_run_id: str, cohort: Input[Dataset], sft_adapter: Input[Model], rl_adapter: Input[Model],
             metrics: Output[Metrics], report: Output[HTML], table: Output[Dataset], evaluation: Output[Dataset]):
    """Score the prompting baselines and every registered model on the test split; write the report.

    The SFT and RL rows are the versions those stages registered in this run (their artifacts' metadata).
    ``evaluation`` is the whole ``DIR/evaluate/`` folder (tables, per-model predictions), which promotion reads.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from eagrl.config import config_from_params
    from eagrl.evaluate.stage import evaluate_stage

    cfg = config_from_params(profile, dataset, task, data_path, overrides, model_source)
    versions = {entry: adapter.metadata["model_version"] for entry, adapter in (("sft", sft_adapter),
                (cfg.rl.variant, rl_adapter)) if adapter.metadata.get("model_version")}
    result = evaluate_stage(cfg, out_dir or tempfile.mkdtemp(), parent_run_id or None, cohort_path=cohort.path,
                            versions=versions)
    shutil.copy(result.outputs["report"], report.path)
    shutil.copy(result.outputs["table"], table.path)
    shutil.copytree(Path(result.outputs["table"]).parent, evaluation.path)
    for key, value in result.metrics.items():
        if isinstance(value, (int, float)):
            metrics.log_metric(key, float(value))
