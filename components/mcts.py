"""Stage-1a component: expert-guided MCTS trajectories, selected and versioned for SFT."""
from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def mcts_trajectories(
    profile: str,
    dataset: str,
    task: str,
    model_source: str,
    data_path: str,
    overrides: str,
    out_dir: str,
    parent_run_id: str,
    cohort: Input[Dataset],
    attention: Input[Dataset],
    trajectories: Output[Dataset],
    metrics: Output[Metrics],
):
    """Search the training split guided by the expert's C_exp; output the selected trajectories (JSONL)."""
    import shutil
    import tempfile

    from eagrl.config import config_from_params
    from eagrl.mcts.stage import mcts_stage

    cfg = config_from_params(profile, dataset, task, data_path, overrides, model_source)
    result = mcts_stage(cfg, out_dir or tempfile.mkdtemp(), parent_run_id or None, cohort_path=cohort.path,
                        attention_path=attention.path)
    shutil.copy(result.outputs["selected"], trajectories.path)
    trajectories.metadata["trajectories_md5"] = result.outputs["trajectories_md5"]
    for key, value in result.metrics.items():
        if isinstance(value, (int, float)):
            metrics.log_metric(key, float(value))
