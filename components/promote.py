"""Promotion component: the RL policy becomes a version of the served model; the champion alias moves on a win."""
from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote_policy(profile: str, dataset: str, task: str, model_source: str, data_path: str, overrides: str,
                   out_dir: str,
                   parent_run_id: str, evaluation: Input[Dataset], rl_adapter: Input[Model],
                   metrics: Output[Metrics]) -> str:
    """Register the RL stage's model as promote.registered_name; move @champion only if its test AUROC wins."""
    import tempfile

    from eagrl.config import config_from_params
    from eagrl.promote.stage import promote_stage

    cfg = config_from_params(profile, dataset, task, data_path, overrides, model_source)
    name, version = rl_adapter.metadata.get("registered_model"), rl_adapter.metadata.get("model_version")
    candidate = f"models:/{name}/{version}" if name and version else None
    result = promote_stage(cfg, out_dir or tempfile.mkdtemp(), parent_run_id or None,
                           evaluation_dir=evaluation.path, candidate=candidate)
    for key, value in result.metrics.items():
        if isinstance(value, (int, float)):
            metrics.log_metric(key, float(value))
    return result.outputs["model_uri"]
