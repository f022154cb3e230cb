"""Stage-2 component: GRPO with the composite reward and entropy-aware clipping, from the SFT adapter."""
from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def rl_policy(profile: str, dataset: str, task: str, model_source: str, data_path: str,
              overrides: str, out_dir: str, parent_run_id: str, cohort: Input[Dataset], attention: Input[Dataset],
              sft_adapter: Input[Model], adapter: Output[Model], metrics: Output[Metrics]):
    """RL (rl.variant; DeepSpeed / vLLM rollouts on GPU when configured), scored on held-out stays, registered."""
    import shutil
    import tempfile

    from eagrl.config import config_from_params
    from eagrl.rl.stage import rl_stage

    cfg = config_from_params(profile, dataset, task, data_path, overrides, model_source)
    result = rl_stage(cfg, out_dir or tempfile.mkdtemp(), parent_run_id or None, cohort_path=cohort.path,
                      attention_path=attention.path, adapter_path=sft_adapter.path)
    shutil.copytree(result.outputs["adapter"], adapter.path)
    adapter.metadata.update({"registered_model": result.outputs["registered_model"],
                             "model_version": result.outputs["model_version"], "model_uri": result.outputs["model_uri"],
                             "variant": cfg.rl.variant})
    for key, value in result.metrics.items():
        if isinstance(value, (int, float)):
            metrics.log_metric(key, float(value))
