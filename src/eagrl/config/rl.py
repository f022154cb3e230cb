"""Configuration of Stage 2 (METHOD.md, "Stage 2: RL"): one documented section, mounted as ``rl``.

``variant`` names the row of the paper's table being trained; it fixes the reward and the clipping, the
settings that tell the baselines and ablations apart (:data:`VARIANTS`):

=========================  ======================  ==========================  ===============
variant                    reward                  upper clip                  starts from
=========================  ======================  ==========================  ===============
eag-rl                     lam R_cls + (1-lam) R_att  1 + eps(tau), entropy-aware  the SFT policy
grpo                       R_cls                   1 + 0.2 (fixed)             the SFT policy
dapo                       R_cls                   1 + 0.28 (clip-higher)      the SFT policy
eag-rl-no-ratt             R_cls                   1 + eps(tau)                the SFT policy
eag-rl-no-adaptive-clip    lam R_cls + (1-lam) R_att  1 + 0.2 (fixed)             the SFT policy
eag-rl-no-stage1           lam R_cls + (1-lam) R_att  1 + eps(tau)                the base model
=========================  ======================  ==========================  ===============

The batch shape follows TRL's GRPOTrainer: one *generation batch* is ``prompts_per_batch`` patients times
``num_generations`` responses; it is cut into ``updates_per_batch`` optimiser steps. Only the first of those
steps is on-policy (the probability ratio is exactly 1 and no clip can bite); the later ones are off-policy,
which is where the clipping, and so eps(tau), acts. ``updates_per_batch = 1`` and ``num_iterations = 1``
therefore make every variant the same plain policy gradient.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from eagrl.config.reward import DEFAULT_LAMBDA
from eagrl.config.section import Section

Variant = Literal["eag-rl", "grpo", "dapo", "eag-rl-no-ratt", "eag-rl-no-adaptive-clip", "eag-rl-no-stage1"]

# variant -> (uses R_att, entropy-aware clip, fixed upper epsilon, starts from SFT)
VARIANTS: dict[str, tuple[bool, bool, float, bool]] = {
    "eag-rl": (True, True, 0.2, True),
    "grpo": (False, False, 0.2, True),
    "dapo": (False, False, 0.28, True),
    "eag-rl-no-ratt": (False, True, 0.2, True),
    "eag-rl-no-adaptive-clip": (True, False, 0.2, True),
    "eag-rl-no-stage1": (True, True, 0.2, False),
}


class RLConfig(Section):
    variant: Variant = Field("eag-rl", description="Which method of the paper's table to train (module docstring).")
    # ---------------------------------------------------------------- reward
    lam: float = Field(DEFAULT_LAMBDA, ge=0.0, le=1.0, description="lambda in R = lam * R_cls + (1 - lam) * R_att.")
    readout_weight: float = Field(
        1.0, ge=0.0, description="yes/no readout: weight of the answer-slot term, the label's negative log-likelihood "
        "under the readout at the slot, P(y) / (P(yes) + P(no)) at temperature 1 (the readout's own gradient, which "
        "the policy gradient lacks; trainer.py); 0: none.",
    )
    balance: bool = Field(
        True, description="Repeat the rarer label's stays until both labels have as many prompts, so every epoch "
        "and batch draws positives and negatives alike.",
    )
    advantage_std_floor: float = Field(
        0.0, ge=0.0, description="Advantages (R - group mean) / max(group std, this floor); 0: TRL's (std + 1e-4). "
        "A floor keeps a group whose rewards differ by thousandths (R_cls saturated near 1) from getting the same "
        "+-1 advantages as a group that disagrees about the label (trainer.py).",
    )
    # ---------------------------------------------------------------- clipping
    epsilon_low: float = Field(0.2, ge=0.0, lt=1.0, description="eps_low: the ratio is clipped below at 1 - eps_low.")
    eps_min: float = Field(0.2, ge=0.0, description="eps(tau) of the lowest-entropy trajectory of the update batch.")
    eps_max: float = Field(0.4, ge=0.0, description="eps(tau) of the highest-entropy trajectory of the update batch.")
    # ---------------------------------------------------------------- sampling
    num_generations: int = Field(8, ge=2, description="G: responses sampled per patient prompt (one group).")
    temperature: float = Field(1.0, gt=0.0, description="Sampling temperature of the rollouts.")
    prompts_per_batch: int = Field(2, ge=1, description="Patients per generation batch (times G responses).")
    micro_batch_size: int = Field(
        8, ge=1, description="Responses per forward/backward pass; divides prompts_per_batch * G."
    )
    updates_per_batch: int = Field(
        2, ge=1, description="Optimiser steps each generation batch is cut into; the steps after the first are "
        "off-policy, so the clip range (and eps(tau)) applies to them."
    )
    num_iterations: int = Field(1, ge=1, description="mu: passes over each generation batch (TRL num_iterations).")
    # ---------------------------------------------------------------- optimisation
    learning_rate: float = Field(2e-5, gt=0.0, description="Peak AdamW learning rate of the LoRA weights.")
    lr_scheduler: str = Field("constant", description="transformers scheduler name (constant, cosine, linear, ...).")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="Gradient clipping norm; null: no clipping.")
    beta: float = Field(0.0, ge=0.0, description="KL coefficient against the start policy (0: no KL term, METHOD).")
    log_kl: bool = Field(
        True, description="Log the KL to the start policy every step even when beta = 0 (one extra no-grad forward "
        "pass of the reference per generation batch)."
    )
    epochs: float = Field(1.0, gt=0.0, description="Passes over the training patients.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps; None: run all epochs.")
    split: Literal["train", "val", "test"] = Field("train", description="The patients RL samples prompts from.")
    max_stays: int | None = Field(
        None, ge=1, description="Use at most this many stays of the split (seeded, label-stratified sample); None: all."
    )
    seed: int = Field(0, description="Seeds the data order, the LoRA init (no-stage1) and every rollout.")
    logging_steps: int = Field(1, ge=1, description="Optimiser steps between two logged points.")
    save_steps: int = Field(
        1, ge=1, description="Optimiser steps between two checkpoints (resume after a stop), rounded up to whole "
        "generation batches (updates_per_batch * num_iterations steps): a run resumed inside a batch would sample a "
        "fresh one where the stopped run went on with its buffered responses.",
    )
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    # ---------------------------------------------------------------- held-out check after training
    eval_split: Literal["train", "val", "test"] = Field("test", description="Split the trained policy is scored on.")
    eval_max_stays: int | None = Field(
        None, ge=1, description="Score at most this many stays (label-stratified sample); None: all."
    )
    eval_n_boot: int = Field(1000, ge=0, description="Bootstrap resamples for the held-out intervals.")
    fit_max_stays: int | None = Field(
        32, ge=0, description="Also score the trained policy on this many of its own training stays (metrics "
        "train_*); None: all; 0: none.",
    )
    # ---------------------------------------------------------------- GPU path
    bf16: bool | None = Field(None, description="bf16 mixed precision; None: on when CUDA supports it, off on CPU.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward (long prompts, GPU).")
    deepspeed: str | None = Field(
        None, description='DeepSpeed config JSON (or "zero2", the SFT one); used only with CUDA.'
    )
    use_vllm: bool = Field(
        False, description="Roll out with TRL's colocated vLLM engine (GPU extra, CUDA only; TRL syncs its weights)."
    )

    # Settings that change neither the rollouts nor the updates (logging, checkpoints, the held-out check after
    # training): left out of the run key, so changing them still resumes an interrupted run.
    NOT_TRAINING: ClassVar[frozenset[str]] = frozenset(
        {"logging_steps", "save_steps", "save_total_limit", "eval_split", "eval_max_stays", "eval_n_boot",
         "fit_max_stays"})

    @model_validator(mode="after")
    def _check(self) -> "RLConfig":
        if self.eps_max < self.eps_min:
            raise ValueError(f"rl.eps_max ({self.eps_max}) must be >= rl.eps_min ({self.eps_min})")
        batch = self.prompts_per_batch * self.num_generations
        if batch % self.micro_batch_size:
            raise ValueError(f"rl.micro_batch_size ({self.micro_batch_size}) must divide prompts_per_batch * "
                             f"num_generations ({self.prompts_per_batch} * {self.num_generations} = {batch})")
        steps = batch // self.micro_batch_size
        if steps % self.updates_per_batch:
            raise ValueError(f"rl.updates_per_batch ({self.updates_per_batch}) must divide the {steps} micro-batches "
                             f"of a generation batch ({batch} responses / micro_batch_size {self.micro_batch_size})")
        path = self.deepspeed_path()
        if path is not None and not path.is_file():
            raise ValueError(f"rl.deepspeed {self.deepspeed!r} is not a file (nor 'zero2')")
        return self

    # ---------------------------------------------------------------- what the variant fixes
    @property
    def uses_r_att(self) -> bool:
        return VARIANTS[self.variant][0]

    @property
    def adaptive_clip(self) -> bool:
        return VARIANTS[self.variant][1]

    @property
    def fixed_epsilon_high(self) -> float:
        return VARIANTS[self.variant][2]

    @property
    def from_sft(self) -> bool:
        return VARIANTS[self.variant][3]

    @property
    def reward_weights(self) -> list[float]:
        """Weights of (R_cls, R_att) in R; a malformed response scores 0 in both."""
        return [self.lam, 1.0 - self.lam] if self.uses_r_att else [1.0, 0.0]

    @property
    def micro_batches_per_batch(self) -> int:
        return self.prompts_per_batch * self.num_generations // self.micro_batch_size

    @property
    def grad_accumulation(self) -> int:
        return self.micro_batches_per_batch // self.updates_per_batch

    @property
    def checkpoint_steps(self) -> int:
        """``save_steps`` rounded up to a whole number of generation batches."""
        per_batch = self.updates_per_batch * self.num_iterations
        return -(-self.save_steps // per_batch) * per_batch

    def epochs_done(self, steps: int, n_stays: int) -> float:
        """Passes over ``n_stays`` patients that ``steps`` optimiser steps make: each generation batch of
        ``prompts_per_batch`` patients gives ``updates_per_batch * num_iterations`` steps. (``max_steps`` stops a
        run before ``epochs`` when it is the smaller, as in TRL: this says how far it got.)"""
        return steps * self.prompts_per_batch / (self.updates_per_batch * self.num_iterations * max(n_stays, 1))

    def deepspeed_path(self) -> Path | None:
        from eagrl.config.sft import DEEPSPEED_ALIASES

        if self.deepspeed is None:
            return None
        return DEEPSPEED_ALIASES.get(self.deepspeed, Path(self.deepspeed).expanduser())
