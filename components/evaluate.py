"""Evaluation component: the comparison table, robustness, generalisation and the HTML report."""
from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(profile: str, dataset: str, task: str, data_path: str, overrides: str, out_dir: str,
             parent_run_id: str, cohort: Input[Dataset], metrics: Output[Metrics], report: Output[HTML],
             table: Output[Dataset]):
    """Score the prompting baselines and every registered model on the test split; write the report."""
    import shutil
    import tempfile

    from eagrl.config import config_from_params
    from eagrl.evaluate.stage import evaluate_stage

    cfg = config_from_params(profile, dataset, task, data_path, overrides)
    result = evaluate_stage(cfg, out_dir or tempfile.mkdtemp(), parent_run_id or None, cohort_path=cohort.path)
    shutil.copy(result.outputs["report"], report.path)
    shutil.copy(result.outputs["table"], table.path)
    for key, value in result.metrics.items():
        if isinstance(value, (int, float)):
            metrics.log_metric(key, float(value))
