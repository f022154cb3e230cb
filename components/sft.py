"""Stage-1b component: LoRA SFT of the policy on the selected trajectories, registered in MLflow."""
from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def sft_policy(
    profile: str,
    dataset: str,
    task: str,
    model_source: str,
    data_path: str,
    overrides: str,
    out_dir: str,
    parent_run_id: str,
    cohort: Input[Dataset],
    trajectories: Input[Dataset],
    adapter: Output[Model],
    metrics: Output[Metrics],
):
    """Train the LoRA adapter (DeepSpeed on GPU when sft.deepspeed is set), score it on held-out stays."""
    import shutil
    import tempfile

    from eagrl.config import config_from_params
    from eagrl.sft.stage import sft_stage

    cfg = config_from_params(profile, dataset, task, data_path, overrides, model_source)
    result = sft_stage(cfg, out_dir or tempfile.mkdtemp(), parent_run_id or None, cohort_path=cohort.path,
                       trajectories_path=trajectories.path)
    shutil.copytree(result.outputs["adapter"], adapter.path)
    adapter.metadata.update(
        {
            "registered_model": result.outputs["registered_model"],
            "model_version": result.outputs["model_version"],
            "model_uri": result.outputs["model_uri"],
        }
    )
    for key, value in result.metrics.items():
        if isinstance(value, (int, float)):
            metrics.log_metric(key, float(value))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def direct_policy(profile: str, dataset: str, task: str, model_source: str, data_path: str,
                  overrides: str, out_dir: str, parent_run_id: str, cohort: Input[Dataset], adapter: Output[Model],
                  metrics: Output[Metrics]):
    """The direct fine-tune baseline: LoRA on the answer slot alone over every training stay, registered."""
    import shutil
    import tempfile

    from eagrl.config import config_from_params
    from eagrl.sft.stage import direct_stage

    cfg = config_from_params(profile, dataset, task, data_path, overrides, model_source)
    result = direct_stage(cfg, out_dir or tempfile.mkdtemp(), parent_run_id or None, cohort_path=cohort.path)
    shutil.copytree(result.outputs["adapter"], adapter.path)
    adapter.metadata.update({"registered_model": result.outputs["registered_model"],
                             "model_uri": result.outputs["model_uri"]})
    for key, value in result.metrics.items():
        if isinstance(value, (int, float)):
            metrics.log_metric(key, float(value))
