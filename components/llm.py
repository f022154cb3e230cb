"""Policy-model components: the zero-shot prompting baselines of the base LLM."""
from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def zero_shot(profile: str, dataset: str, task: str, model_source: str, data_path: str, overrides: str,
              out_dir: str, parent_run_id: str, cohort: Input[Dataset], metrics: Output[Metrics]):
    """Score the base model with P_QD / vanilla / think-then-answer prompting on the test split."""
    import tempfile

    from eagrl.config import config_from_params
    from eagrl.zeroshot.stage import zeroshot_stage

    cfg = config_from_params(profile, dataset, task, data_path, overrides, model_source)
    result = zeroshot_stage(cfg, out_dir or tempfile.mkdtemp(), parent_run_id or None, cohort_path=cohort.path)
    for key, value in result.metrics.items():
        if isinstance(value, (int, float)):
            metrics.log_metric(key, float(value))
