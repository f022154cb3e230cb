"""The EAG-RL pipeline: it only wires stage components together (the work is in ``eagrl``).

``build_pipeline(cfg)`` is a pure function of the config: the graph, with each task's resources, volume, secrets and
image from ``cfg.cluster`` and ``cfg.pipeline`` (pipelines/platform.py). ``compile_pipeline(path, cfg)`` writes its
KFP v2 YAML (``eagrl pipeline compile``; the committed pipelines/eagrl_pipeline.yaml is the paper profile's);
``eagrl run`` executes the same graph with KFP's local runner, which ignores the cluster settings.
"""

from pathlib import Path

from kfp import compiler, dsl

from components.data import prepare_data, validate_data
from components.evaluate import evaluate
from components.expert import train_expert
from components.llm import zero_shot
from components.mcts import mcts_trajectories
from components.promote import promote_policy
from components.rl import rl_policy
from components.sft import direct_policy, sft_policy
from eagrl.config import Config, load_config
from pipelines.platform import apply_platform

STAGES = [
    "validate",
    "prepare",
    "expert",
    "zeroshot",
    "mcts",
    "sft",
    "direct",
    "rl",
    "evaluate",
    "promote",
]  # in order; summary.json reports each


def build_pipeline(cfg: Config | None = None):
    """The pipeline function, its tasks configured for ``cfg``'s cluster and images (default: the paper profile)."""
    cfg = cfg if cfg is not None else load_config("paper")

    @dsl.pipeline(
        name="eagrl",
        description="EAG-RL on EHRs: validate -> prepare -> expert -> zero-shot -> MCTS -> SFT -> direct baseline "
        "-> RL -> evaluate -> promote",
    )
    def eagrl_pipeline(
        profile: str = "default",
        dataset: str = "",
        task: str = "",
        model: str = "",
        data_path: str = "",
        overrides: str = "{}",
        out_dir: str = "",
        parent_run_id: str = "",
    ):
        common = dict(profile=profile, dataset=dataset, task=task, model_source=model, data_path=data_path,
                      overrides=overrides, out_dir=out_dir, parent_run_id=parent_run_id)
        validated = validate_data(**common).set_display_name("validate EHR (Great Expectations)")
        prepared = prepare_data(validated=validated.outputs["cohort"], **common)
        prepared.set_display_name("prepare + version cohort (DVC)")
        expert = train_expert(cohort=prepared.outputs["cohort"], **common).set_display_name("expert: ConCare")
        zeroshot = zero_shot(cohort=prepared.outputs["cohort"], **common).set_display_name("zero-shot baselines")
        zeroshot.after(expert)  # one stage at a time on a single machine; the GPU stages share one device
        mcts = mcts_trajectories(cohort=prepared.outputs["cohort"], attention=expert.outputs["attention"], **common)
        mcts.set_display_name("stage 1: expert-guided MCTS").after(zeroshot)
        sft = sft_policy(cohort=prepared.outputs["cohort"], trajectories=mcts.outputs["trajectories"], **common)
        sft.set_display_name("stage 1: SFT (LoRA)")
        direct = direct_policy(cohort=prepared.outputs["cohort"], **common).after(sft)
        direct.set_display_name("baseline: direct fine-tune (answer slot, no reasoning)")
        rl = rl_policy(cohort=prepared.outputs["cohort"], attention=expert.outputs["attention"],
                       sft_adapter=sft.outputs["adapter"], **common)
        rl.set_display_name("stage 2: RL (GRPO, entropy-aware clipping)").after(direct)
        evaluation = evaluate(cohort=prepared.outputs["cohort"], sft_adapter=sft.outputs["adapter"],
                              rl_adapter=rl.outputs["adapter"], **common)  # scores the versions they registered
        evaluation.set_display_name("evaluate: comparison table, robustness, report")
        promote = promote_policy(evaluation=evaluation.outputs["evaluation"], rl_adapter=rl.outputs["adapter"],
                                 **common)
        promote.set_display_name("promote: @champion moves only on a paired-bootstrap win")
        apply_platform(settings=cfg.cluster, images=cfg.pipeline)  # GPUs, nodes, volume, secrets, images

    return eagrl_pipeline


eagrl_pipeline = build_pipeline()  # what `eagrl run` executes locally (the cluster settings do not apply there)


def compile_pipeline(path: "str | Path" = "pipelines/eagrl_pipeline.yaml", cfg: Config | None = None) -> Path:
    """Write the KFP v2 YAML of :func:`build_pipeline` for ``cfg`` (default: the paper profile)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(cfg) if cfg is not None else eagrl_pipeline, str(path))
    return path


if __name__ == "__main__":
    print(compile_pipeline())
