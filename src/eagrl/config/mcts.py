"""Settings of the Stage-1 search (METHOD.md, "Stage 1: expert-guided MCTS"): one documented section.

``depth`` defaults to None, which takes T from ``GenerationConfig.depth`` (also 7 by default): the response
format told to the model ("1 to {depth} such steps") and the forced answer at T then agree. Set it to run
the search deeper or shallower than the prompt says; the search then uses a copy of the generation config
with that depth.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from eagrl.config.reward import DEFAULT_LAMBDA
from eagrl.config.section import Section


class MCTSConfig(Section):
    rollouts: int = Field(8, ge=1, description="N: rollouts (selection, expansion, simulation, backup) per patient.")
    depth: int | None = Field(
        None, ge=1, description="T: most steps in a path, the answer is forced at T; None: GenerationConfig.depth."
    )
    branching: int = Field(3, ge=1, description="b: candidate (sub-question, answer) steps sampled per expansion.")
    exploration: float = Field(1.0, ge=0.0, description="c: UCT exploration weight, Q + c * sqrt(ln N_parent / n).")
    parallel: int = Field(
        1, ge=1, description="K: rollouts selected together (virtual loss) and simulated as one batch; 1: one at a "
        "time, each reward backed up before the next selection (METHOD). K = b costs the tree little (search.py)."
    )
    temperature: float | None = Field(
        1.0, ge=0.0, description="Sampling temperature of expansions and rollouts (the search needs diverse "
        "candidates even where evaluation decodes greedily); None: generation.temperature."
    )
    sample_readout: bool = Field(
        False, description="Draw each rollout's answer token from the model (generation.sample_readout), so "
        "trajectories of both classes can land on the correct side of 0.5 and SFT trains the answer token."
    )
    lam: float = Field(DEFAULT_LAMBDA, ge=0.0, le=1.0, description="lambda in R = lam * R_cls + (1 - lam) * R_att.")
    expert_guidance: bool = Field(
        True, description="Use the expert's C_exp in the search reward; False (ablation): R_att = 0, R = lam * R_cls."
    )
    expert_features: bool = Field(
        False, description="Each rollout also ends once with the expert's C_exp written as its important features "
        "(the same reasoning; trained on as the policy's own text), a candidate the selection ranks by R like any "
        "other. Off: every candidate names what the policy sampled, which a small policy rarely makes the "
        "expert's (docs/results.md, session 22). Not backed up into the tree; needs expert_guidance."
    )
    rollout_more_steps: bool = Field(
        True, description="Simulation may add steps per the step policy (up to T); False: answer at the leaf."
    )
    top_k_per_patient: int = Field(2, ge=1, description="Selected trajectories per patient (highest R first).")
    balance: bool = Field(True, description="Keep as many positive-label as negative-label trajectories.")
    dedupe: bool = Field(True, description="Select a response text at most once per patient.")
    slot_rollouts: Literal["selected", "all"] = Field(
        "all", description="Which rollouts of a kept patient train SFT's answer slot (yes/no readout): all (the "
        "selected ones with their reasoning, the others for the slot alone, so the text's cue carries no net label) "
        "or selected (the slot learns the cue R_cls's selection wrote into the text; docs/results.md, session 16)."
    )
    seed: int = Field(0, description="Base seed; patient i's tree is seeded from (seed, stay_id).")
    split: Literal["train", "val", "test"] = Field("train", description="Which cohort split is searched (the SFT set).")
    max_stays: int | None = Field(
        None, ge=1,
        description="Search at most this many stays of the split (a seeded, label-stratified sample); None: all."
    )
    n_boot: int = Field(1000, ge=0, description="Bootstrap resamples for the intervals of the reward statistics.")

    @model_validator(mode="after")
    def _check(self) -> "MCTSConfig":
        if self.expert_features and not self.expert_guidance:
            raise ValueError("mcts.expert_features writes the expert's C_exp into candidates, which the unguided "
                             "ablation (mcts.expert_guidance: false) must not see: turn one of them off")
        if self.top_k_per_patient > self.rollouts:
            raise ValueError(f"mcts.top_k_per_patient ({self.top_k_per_patient}) must not exceed "
                             f"mcts.rollouts ({self.rollouts}): a patient has at most N completed trajectories")
        return self

    def resolved_depth(self, generation_depth: int) -> int:
        return int(self.depth if self.depth is not None else generation_depth)
