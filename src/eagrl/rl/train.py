"""Stage 2 training: ``run_rl(model_cfg, gen_cfg, rl_cfg, cohort, c_exp, out_dir, sft_adapter=...)``.

The policy starts from the Stage-1 adapter, which RL keeps training (so the result is one LoRA adapter on the
base model, registered like the SFT one); a frozen copy of it, the ``ref`` adapter, is the start policy the
KL is measured (and, with ``rl.beta > 0``, penalised) against. ``eag-rl-no-stage1`` starts from a fresh
adapter on the base model instead (its start policy: adapters disabled).

``out_dir`` receives ``checkpoints/`` (every ``rl.save_steps``, at generation-batch ends; a rerun resumes from the
last one, with the eps(tau) values used so far),
``adapter/`` (the trained adapter and ``rl_config.json``), ``train_history.json`` (one row per logged step)
and ``train_metrics.json``. Nothing is logged to MLflow unless the caller has a run open (then every step).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import PrinterCallback

from eagrl.config.llm import GenerationConfig, ModelConfig
from eagrl.config.reward import DEFAULT_CLS, ClsReward
from eagrl.config.rl import RLConfig
from eagrl.data.cohort import Cohort
from eagrl.errors import DataError
from eagrl.llm.loading import LoadedModel, attach_lora, load_model, mlflow_model_dir
from eagrl.rl.rollout import StructuredRollout, r_att, r_cls, r_cls_with
from eagrl.rl.trainer import EAGRLTrainer, MlflowSteps, ProgressLog

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
HISTORY_KEYS = ("reward", "reward_std", "rewards/r_cls/mean", "rewards/r_att/mean", "entropy",
                "entropy/features_mean", "eps/mean", "eps/min", "eps/max", "eps/std", "clip_ratio/low_mean",
                "clip_ratio/high_mean", "clip_ratio/region_mean", "kl_to_start", "kl", "loss",
                "completions/mean_length", "frac_reward_zero_std", "readout/nll", "readout/accuracy", "learning_rate",
                "grad_norm", "step_time")


@dataclass
class RLResult:
    adapter_dir: Path
    metrics: dict[str, float]
    history: list[dict[str, float]]  # per logged step: step plus HISTORY_KEYS present
    eps_values: list[float] = field(default_factory=list)  # every eps(tau) used, in order
    model: torch.nn.Module | None = field(default=None, repr=False)  # trained PeftModel (unmerged, eval mode)
    tokenizer: object = field(default=None, repr=False)


def run_rl(model_cfg: ModelConfig, gen_cfg: GenerationConfig, rl_cfg: RLConfig, cohort: Cohort,
           c_exp: dict[str, list[str]], out_dir: str | Path, *, sft_adapter: str | Path | None = None,
           lora_cfg: ModelConfig | None = None, loaded: LoadedModel | None = None,
           cls_reward: ClsReward | None = None) -> RLResult:
    """Train with GRPO (the variant of ``rl_cfg``) on the split's patients; save the adapter and the curves.

    ``sft_adapter`` (a folder or ``models:/`` URI) is required unless the variant starts from the base model,
    which then gets a fresh adapter with ``lora_cfg``'s LoRA settings.
    """
    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(rl_cfg.seed)
    loaded = loaded or load_model(model_cfg.model_copy(update={"adapter": None}))
    model = policy_model(loaded.model, rl_cfg, sft_adapter, lora_cfg or model_cfg, model_cfg.resolved_cache_dir())
    prompts, rows = prompt_table(cohort, c_exp, rl_cfg, gen_cfg, loaded.tokenizer)
    log.info("RL (%s) on %d %s stays, G=%d, %d patients x G per generation batch", rl_cfg.variant, len(rows),
             rl_cfg.split, rl_cfg.num_generations, rl_cfg.prompts_per_batch)

    cuda = loaded.device.type == "cuda"
    rollout = StructuredRollout(
        prompts,
        cohort.features,
        gen_cfg.model_copy(update={"temperature": rl_cfg.temperature}),
        seed=rl_cfg.seed,
        batch_size=gen_cfg.batch_size,
        prefix_cache_tokens=gen_cfg.prefix_cache_tokens,
        labels={r["prompt"]: r["label"] for r in rows},
    )
    trainer = build_trainer(model, loaded.tokenizer, rl_cfg, rows, rollout, out / "checkpoints", cuda,
                            cls_reward=cls_reward)
    resume = get_last_checkpoint(str(out / "checkpoints")) if (out / "checkpoints").is_dir() else None
    if resume:
        log.info("RL resumes from %s", resume)
        trainer.load_eps_values(resume)

    t0 = time.perf_counter()
    if resume and finished(resume, rl_cfg):
        log.info("RL reached its last step in %s: nothing left to train", resume)
        train_out = restore(trainer, resume)
    else:
        train_out = trainer.train(resume_from_checkpoint=resume)
        train_out = train_out._replace(training_loss=mean_train_loss(trainer.state.log_history))
    seconds = time.perf_counter() - t0

    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" in getattr(peft_model, "peft_config", {}):
        peft_model.delete_adapter("ref")  # the frozen start policy is not part of the result
    adapter_dir = out / ADAPTER_DIR
    peft_model.save_pretrained(adapter_dir)
    (adapter_dir / "rl_config.json").write_text(json.dumps(
        {"rl": rl_cfg.model_dump(mode="json"), "model": model_cfg.model_dump(mode="json")}, indent=1))

    history = step_history(trainer.state.log_history)
    metrics = summary_metrics(history, train_out, seconds, len(rows), trainer.eps_values)
    (out / "train_history.json").write_text(json.dumps(history, indent=1))
    (out / "train_metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    peft_model.eval()
    return RLResult(adapter_dir, metrics, history, list(trainer.eps_values), peft_model, loaded.tokenizer)


def finished(checkpoint: str | Path, rl_cfg: RLConfig) -> bool:
    """Whether the checkpoint is at (or past) the run's last step. Resumed from there, the Trainer took one more
    optimiser step (3 of rl.max_steps 2 with trl 1.16 / transformers 5: the test pins that it no longer does), so a
    rerun of a finished run, e.g. to re-score it with another held-out cap, changed the policy."""
    if not (Path(checkpoint) / "adapter_model.safetensors").is_file():
        return False  # a checkpoint restore() cannot read: let the Trainer resume it
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    target = rl_cfg.max_steps or int(state.get("max_steps") or 0)
    return target > 0 and int(state["global_step"]) >= target


def restore(trainer, checkpoint: str | Path):
    """Load a finished run's adapter weights and training state from its last checkpoint, as training would end."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import TrainerState
    from transformers.trainer_utils import TrainOutput

    path = Path(checkpoint)
    model = trainer.accelerator.unwrap_model(trainer.model)
    loaded = set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"), adapter_name="default")
    if getattr(loaded, "unexpected_keys", None):
        raise DataError(f"{path}: the checkpoint's adapter does not fit this policy "
                        f"(e.g. {loaded.unexpected_keys[:3]})")
    trainer.state = TrainerState.load_from_json(str(path / "trainer_state.json"))
    return TrainOutput(trainer.state.global_step, mean_train_loss(trainer.state.log_history), {})


def mean_train_loss(log_history: list[dict]) -> float:
    """The training loss averaged over every logged optimiser step of the run, from the logged losses (each the mean
    over the steps since the log before it). The Trainer's own ``training_loss`` covers the steps of its last call
    only, so a resumed run reported the loss of its resumed steps."""
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry and "train_loss" not in entry:
            step = int(entry["step"])
            total, last = total + float(entry["loss"]) * (step - last), step
    return total / last if last else float("nan")


# ====================================================================== the policy and its start
def policy_model(base: torch.nn.Module, rl_cfg: RLConfig, sft_adapter, lora_cfg: ModelConfig, cache: Path):
    """A trainable PeftModel: the Stage-1 adapter (plus its frozen copy ``ref``), or a fresh one (no-stage1)."""
    if not rl_cfg.from_sft:
        return attach_lora(base, lora_cfg)
    if sft_adapter is None:
        raise DataError(f"rl.variant={rl_cfg.variant!r} starts from the Stage-1 policy: give the SFT adapter "
                        "(run `eagrl sft` first, or pass --adapter)")
    from peft import PeftModel

    path = str(sft_adapter)
    if path.startswith("models:/"):
        path = str(mlflow_model_dir(path, cache))
    if not (Path(path) / "adapter_config.json").is_file():
        raise DataError(f"{path} is not a LoRA adapter folder (no adapter_config.json)")
    model = PeftModel.from_pretrained(base, path, is_trainable=True)
    if rl_cfg.log_kl or rl_cfg.beta > 0:
        model.load_adapter(path, adapter_name="ref", is_trainable=False)  # the start policy, frozen
        model.set_adapter("default")
    return model


def prompt_table(cohort: Cohort, c_exp: dict[str, list[str]], rl_cfg: RLConfig, gen_cfg: GenerationConfig,
                 tokenizer) -> tuple[dict[str, list[int]], list[dict]]:
    """The chat-templated prompt ids of every stay RL samples from, and the dataset rows (no patient text)."""
    from eagrl.llm.prompt import build_prompt, encode

    stay_ids = cohort.sample_ids(rl_cfg.split, rl_cfg.max_stays, rl_cfg.seed)  # all, or a label-stratified sample
    if len(stay_ids) < rl_cfg.prompts_per_batch:
        raise DataError(f"the {rl_cfg.split} split has {len(stay_ids)} stays, fewer than rl.prompts_per_batch "
                        f"({rl_cfg.prompts_per_batch})")
    missing = [s for s in stay_ids if s not in c_exp]
    if missing:
        raise DataError(f"the expert attention table has no C_exp for {len(missing)} RL stays (e.g. {missing[:3]})")
    gen = gen_cfg.model_copy(update={"prompt_style": "pqd"})
    prompts, rows = {}, []
    for sid in stay_ids:
        rec = cohort.patient(sid)
        prompt = build_prompt(rec, cohort.features, dataset=cohort.dataset, task=cohort.task, cfg=gen,
                              tokenizer=tokenizer)
        prompts[sid] = encode(prompt, tokenizer)
        rows.append({"prompt": sid, "label": int(rec.label), "c_exp": [str(c) for c in c_exp[sid]]})
    return prompts, balanced(rows) if rl_cfg.balance else rows


def balanced(rows: list[dict]) -> list[dict]:
    """The rows, the rarer label's repeated in turn until both labels have as many (unchanged when one is absent)."""
    by = {y: [r for r in rows if r["label"] == y] for y in (0, 1)}
    if not by[0] or not by[1]:
        return rows
    small, big = sorted(by.values(), key=len)
    extra = [small[i % len(small)] for i in range(len(big) - len(small))]
    return rows + extra


# ====================================================================== the trainer
def training_args(rl_cfg: RLConfig, out_dir: Path, cuda: bool):
    """TRL's GRPOConfig for our settings; every TRL default that matters here is set explicitly."""
    from trl import GRPOConfig

    from eagrl.sft.train import gpu_options

    bf16, deepspeed = gpu_options("rl", rl_cfg.bf16, rl_cfg.deepspeed, rl_cfg.deepspeed_path(), cuda)
    return GRPOConfig(
        output_dir=str(out_dir),
        learning_rate=rl_cfg.learning_rate,
        lr_scheduler_type=rl_cfg.lr_scheduler,
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=rl_cfg.max_grad_norm or 0.0,  # transformers clips only above 0
        num_train_epochs=rl_cfg.epochs,
        max_steps=rl_cfg.max_steps or -1,
        per_device_train_batch_size=rl_cfg.micro_batch_size,
        gradient_accumulation_steps=rl_cfg.grad_accumulation,
        steps_per_generation=rl_cfg.micro_batches_per_batch,
        num_generations=rl_cfg.num_generations,
        num_iterations=rl_cfg.num_iterations,
        temperature=rl_cfg.temperature,
        beta=rl_cfg.beta,
        epsilon=rl_cfg.epsilon_low,
        epsilon_high=rl_cfg.fixed_epsilon_high,  # replaced per trajectory by eps(tau) when the variant adapts it
        loss_type="dapo",  # token-level: every model-written token of the batch weighs the same
        scale_rewards="group",
        reward_weights=rl_cfg.reward_weights,
        multi_objective_aggregation="sum_then_normalize",
        mask_truncated_completions=False,
        disable_dropout=True,  # ratios of 1 on-policy, not dropout noise
        seed=rl_cfg.seed,
        data_seed=rl_cfg.seed,
        bf16=bf16,
        fp16=False,
        use_cpu=not cuda,
        gradient_checkpointing=rl_cfg.gradient_checkpointing,
        deepspeed=deepspeed,
        use_vllm=bool(rl_cfg.use_vllm and cuda),
        vllm_mode="colocate",
        logging_steps=rl_cfg.logging_steps,
        save_strategy="steps",
        save_steps=rl_cfg.checkpoint_steps,
        save_total_limit=rl_cfg.save_total_limit,
        report_to="none",  # MlflowSteps logs into the stage's own run
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        log_completions=False,  # completions hold patient-derived text
    )


def build_trainer(model, tokenizer, rl_cfg: RLConfig, rows: list[dict], rollout: StructuredRollout, out_dir: Path,
                  cuda: bool, cls_reward: ClsReward | None = None) -> EAGRLTrainer:
    import os

    from datasets import Dataset

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is pinned and tested with trl 1.16
    trainer = EAGRLTrainer(
        model=model,
        reward_funcs=[r_cls if cls_reward in (None, DEFAULT_CLS) else r_cls_with(cls_reward), r_att],
        args=training_args(rl_cfg, out_dir, cuda),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        rollout_func=rollout,
        callbacks=[ProgressLog(), MlflowSteps()],
        rl_cfg=rl_cfg,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


# ====================================================================== curves and summary
def step_history(log_history: list[dict]) -> list[dict[str, float]]:
    rows = []
    for entry in log_history:
        if "loss" in entry and "train_loss" not in entry:  # every optimiser step; rewards only where sampled
            row = {"step": float(entry.get("step", len(rows) + 1))}
            row.update({k: float(entry[k]) for k in HISTORY_KEYS if isinstance(entry.get(k), (int, float))})
            rows.append(row)
    return rows


def summary_metrics(history: list[dict], train_out, seconds: float, n_stays: int, eps_values: list[float]) -> dict:
    out = {"train_steps": int(train_out.global_step), "train_seconds": seconds, "n_rl_stays": n_stays,
           "train_loss": float(train_out.training_loss),
           "seconds_per_step": seconds / max(int(train_out.global_step), 1)}
    for key, name in (("reward", "reward"), ("rewards/r_cls/mean", "r_cls"), ("rewards/r_att/mean", "r_att"),
                      ("entropy", "entropy"), ("eps/mean", "eps"), ("kl_to_start", "kl_to_start")):
        vals = [r[key] for r in history if key in r]
        if vals:
            out[f"first_{name}"], out[f"last_{name}"] = vals[0], vals[-1]
        if len(vals) >= 2:  # one step's batch is a few patients: halves are a steadier trend than two steps
            half = len(vals) // 2
            out[f"early_{name}"], out[f"late_{name}"] = float(np.mean(vals[:half])), float(np.mean(vals[-half:]))
    if eps_values:
        t = torch.tensor(eps_values)
        out.update({"eps_all_mean": t.mean().item(), "eps_all_min": t.min().item(), "eps_all_max": t.max().item()})
    return out
