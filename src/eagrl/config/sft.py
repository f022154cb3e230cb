"""Configuration of the SFT step: the LoRA adapter, the optimiser, the batch and the GPU extras.

The LoRA fields live here rather than being read from ``ModelConfig`` so the SFT adapter can differ from the
one RL attaches later; :meth:`SFTConfig.lora_model_config` copies them onto a ``ModelConfig`` so that
:func:`eagrl.llm.loading.attach_lora` builds the adapter. Defaults follow METHOD.md (r = 16, alpha = 32,
dropout 0.05, every attention and MLP projection, lr 2e-4). Mounted in the main config as ``sft``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from eagrl.config.llm import LORA_TARGETS, ModelConfig
from eagrl.config.section import Section

ZERO2_CONFIG = Path(__file__).parent.parent / "sft" / "deepspeed_zero2.json"
DEEPSPEED_ALIASES = {"zero2": ZERO2_CONFIG}


class SFTConfig(Section):
    # ---------------------------------------------------------------- LoRA
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    lora_target_modules: list[str] = Field(
        list(LORA_TARGETS), description="Module names that get LoRA (all attention and MLP projections)."
    )
    # ---------------------------------------------------------------- optimisation
    learning_rate: float = Field(2e-4, gt=0.0, description="Peak AdamW learning rate of the LoRA weights.")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name (cosine, linear, constant, ...).")
    warmup_ratio: float = Field(
        0.0, ge=0.0, lt=1.0, description="Share of the steps spent warming up. transformers rounds it up to whole "
        "steps, and the first warm-up step has learning rate 0: on a small trajectory set (one or two steps) any "
        "warm-up means no update at all, so the default is none."
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(
        1.0, gt=0.0, description="Gradient clipping norm; null: no clipping. At one stay a step, clipping cuts the "
        "steps the slot gets wrong (norm 4-7) and not the ones it gets right (0.1-0.4), which undoes the class "
        "weights (docs/results.md, session 23)."
    )
    epochs: float = Field(2.0, gt=0.0, description="Passes over the trajectory set.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps; None: run all epochs.")
    # ---------------------------------------------------------------- batch
    batch_size: int = Field(4, ge=1, description="Trajectories per device per forward pass.")
    grad_accumulation: int = Field(4, ge=1, description="Forward passes accumulated per optimiser step.")
    max_seq_len: int = Field(
        4096, ge=16, description="Longest prompt + response in tokens; longer: the prompt loses tokens from its left."
    )
    max_examples: int | None = Field(None, ge=1, description="Train on at most this many trajectories (smoke runs).")
    fit_max_stays: int | None = Field(
        32, ge=0, description="Also score the trained policy on this many of its own training stays (fit before "
        "generalisation: metrics train_*); None: all; 0: none.",
    )
    answer_weight: float = Field(
        1.0, ge=0.0, description="Weight of the answer-slot loss (cross-entropy of the label's word against the other "
        "word, P(yes) vs P(no), the readout itself; yes/no readout) beside the mean NLL of the reasoning tokens.",
    )
    reasoning_weight: float = Field(
        1.0, ge=0.0, description="Weight of the mean NLL of the model-written reasoning tokens (0: the answer slot "
        "alone, as the direct fine-tune).",
    )
    own_text_epochs: float = Field(
        0.0, ge=0.0, description="Second phase (yes/no readout): passes of the answer slot alone, trained on the label "
        "after the policy's own greedy response to every training stay (the text it is read after in the evaluation, "
        "RL and serving; eagrl.sft.own_text). 0: off.",
    )
    class_weighted: bool = Field(
        True, description="Weigh each class's answer-slot loss by n / (2 n_class), so both labels pull equally.",
    )
    seed: int = Field(0, description="Seeds the LoRA init, the data order and dropout.")
    logging_steps: int = Field(1, ge=1, description="Optimiser steps between two points of the loss curve.")
    # ---------------------------------------------------------------- held-out check after training
    eval_split: Literal["train", "val", "test"] = Field(
        "test", description="Split the trained policy is scored on (P_QD, as the zero-shot stage scores the base)."
    )
    eval_max_stays: int | None = Field(
        None, ge=1, description="Score at most this many stays (label-stratified sample); None: all."
    )
    eval_n_boot: int = Field(1000, ge=0, description="Bootstrap resamples for the held-out intervals.")
    # ---------------------------------------------------------------- GPU path
    bf16: bool | None = Field(
        None, description="bf16 mixed precision; None: on when CUDA supports it, always off on CPU."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward (long prompts, GPU).")
    deepspeed: str | None = Field(
        None, description='DeepSpeed config JSON (or "zero2" for the bundled ZeRO-2 one); used only with CUDA.'
    )

    @model_validator(mode="after")
    def _check(self) -> "SFTConfig":
        if not self.lora_target_modules:
            raise ValueError("sft.lora_target_modules is empty; name at least one module (e.g. q_proj)")
        path = self.deepspeed_path()
        if path is not None and not path.is_file():
            raise ValueError(f"sft.deepspeed {self.deepspeed!r} is not a file (nor 'zero2')")
        return self

    def deepspeed_path(self) -> Path | None:
        if self.deepspeed is None:
            return None
        return DEEPSPEED_ALIASES.get(self.deepspeed, Path(self.deepspeed).expanduser())

    def lora_model_config(self, model_cfg: ModelConfig) -> ModelConfig:
        """``model_cfg`` with this section's LoRA settings (what ``attach_lora`` reads)."""
        return model_cfg.model_copy(update={
            "lora_r": self.lora_r, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout,
            "lora_target_modules": list(self.lora_target_modules),
        })
