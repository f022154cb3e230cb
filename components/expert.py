"""Expert component: ConCare on the versioned cohort, tracked and registered in MLflow."""
from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_expert(profile: str, dataset: str, task: str, model_source: str, data_path: str, overrides: str,
                 out_dir: str, parent_run_id: str, cohort: Input[Dataset], attention: Output[Dataset],
                 model: Output[Model], metrics: Output[Metrics]):
    """Train ConCare, evaluate it on test, export per-stay attention and C_exp (top-k features)."""
    import shutil
    import tempfile

    from eagrl.config import config_from_params
    from eagrl.expert.stage import expert_stage

    cfg = config_from_params(profile, dataset, task, data_path, overrides, model_source)
    result = expert_stage(cfg, out_dir or tempfile.mkdtemp(), parent_run_id or None, cohort_path=cohort.path)
    shutil.copy(result.outputs["attention"], attention.path)
    shutil.copy(result.outputs["model"], model.path)
    model.metadata["registered_model"] = result.outputs["registered_model"]
    for key, value in result.metrics.items():
        if isinstance(value, (int, float)):
            metrics.log_metric(key, float(value))
