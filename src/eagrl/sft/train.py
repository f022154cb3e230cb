"""LoRA SFT of the policy on the selected trajectories: ``run_sft(model_cfg, sft_cfg, path, out_dir)``.

TRL's ``SFTTrainer`` (pinned trl 1.16) is used, with one step replaced (:class:`AnswerSlotSFTTrainer`): the
loss is ``reasoning_weight`` x the mean NLL of the model-written response tokens plus ``answer_weight`` x the
answer-slot loss, the cross-entropy of the label's word against the other at the slot where the readout is
read (log of P(y) / (P(yes) + P(no)), each summed over spellings: exactly the readout that MCTS, RL, the
evaluation and serving use), class-weighted. Without it the one answer token among ~100 reasoning tokens
barely moves the readout. We cut the prompt ourselves (``max_length=None`` there: TRL only cuts whole
sequences from one end) and pass our own collator. The adapter is attached with
:func:`eagrl.llm.loading.attach_lora` before the trainer sees the model, so the same code path builds adapters for SFT
and RL.

Nothing is logged to MLflow here; the caller logs :class:`SFTResult` (metrics, loss history, adapter dir).
``out_dir`` receives ``adapter/`` (adapter_model.safetensors, adapter_config.json, sft_config.json),
``train_history.json`` (one row per logging step) and ``train_metrics.json``.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainerCallback
from trl import SFTTrainer

from eagrl.config.llm import ModelConfig
from eagrl.config.sft import SFTConfig
from eagrl.llm.loading import LoadedModel, attach_lora, causal_lm, load_model
from eagrl.sft.data import ExampleSet, SFTCollator, load_examples

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"


@dataclass
class SFTResult:
    adapter_dir: Path
    metrics: dict[str, float]  # flat numbers, ready for mlflow.log_metrics / metrics.json
    history: list[dict[str, float]]  # per logging step: step, epoch, loss, learning_rate, grad_norm
    model: torch.nn.Module | None = field(default=None, repr=False)  # the trained PeftModel (unmerged, eval mode)
    tokenizer: object = field(default=None, repr=False)


# ====================================================================== entry point
def run_sft(model_cfg: ModelConfig, sft_cfg: SFTConfig, trajectories_path: str | Path, out_dir: str | Path,
            *, loaded: LoadedModel | None = None, readout: str = "yesno") -> SFTResult:
    """Train a LoRA adapter on the trajectories; save it and its loss curve under ``out_dir``.

    ``loaded`` (optional) reuses a model already in memory; its weights gain LoRA layers in place. ``readout``
    (``generation.readout``): with ``yesno`` the answer slot is trained on each stay's label.
    """
    from transformers import set_seed

    from eagrl.llm.structured import answer_words, tokenizer_encode, yes_no_ids

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = loaded or load_model(model_cfg.model_copy(update={"adapter": None}))
    encode = tokenizer_encode(loaded.tokenizer)
    answer = answer_words(encode) if readout == "yesno" else None
    data = load_examples(trajectories_path, sft_cfg.max_seq_len, sft_cfg.max_examples, answer_tokens=answer)
    log.info("SFT on %d examples (%d reasoning target tokens, %d answer slots) from %s", len(data.examples),
             data.n_target_tokens, data.n_answer_targets, trajectories_path)

    set_seed(sft_cfg.seed)  # before attach_lora: the LoRA A matrices are drawn here
    model = attach_lora(loaded.model, sft_cfg.lora_model_config(model_cfg))
    cuda = loaded.device.type == "cuda"
    trainer = build_trainer(model, loaded.tokenizer, sft_cfg, data, out / "checkpoints", cuda=cuda,
                            readout_ids=yes_no_ids(encode) if answer else None)

    train_out, seconds, adapter_dir, history = train_and_save(trainer, out, sft_cfg, model_cfg)
    metrics = {**data.stats(), **summary_metrics(history, train_out, seconds, data)}
    (out / "train_metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    log.info("SFT done in %.1f s: loss %.4f -> %.4f, adapter in %s", seconds, metrics.get("first_loss", math.nan),
             metrics.get("last_loss", math.nan), adapter_dir)
    return SFTResult(adapter_dir, metrics, history, trainer.model, loaded.tokenizer)


def train_and_save(trainer, out: Path, sft_cfg: SFTConfig, model_cfg: ModelConfig):
    """Run ``trainer``; save its adapter with the settings it was trained with (``out/adapter``) and its loss curve
    (``out/train_history.json``); leave the model in eval mode. Returns (train output, seconds, adapter dir, loss
    history). SFT and its own-text phase (:mod:`eagrl.sft.own_text`) both train through it."""
    t0 = time.perf_counter()
    train_out = trainer.train()
    seconds = time.perf_counter() - t0
    adapter_dir = out / ADAPTER_DIR
    trainer.model.save_pretrained(adapter_dir)
    (adapter_dir / "sft_config.json").write_text(json.dumps(
        {"sft": sft_cfg.model_dump(mode="json"), "model": model_cfg.model_dump(mode="json")}, indent=1))
    history = loss_history(trainer.state.log_history)
    (out / "train_history.json").write_text(json.dumps(history, indent=1))
    trainer.model.eval()
    if (out / "checkpoints").is_dir() and not any((out / "checkpoints").iterdir()):
        (out / "checkpoints").rmdir()  # save_strategy="no" leaves it empty
    return train_out, seconds, adapter_dir, history


def load_sft_model(model_cfg: ModelConfig, adapter_dir: str | Path, merge: bool = True) -> LoadedModel:
    """The base model with a trained adapter attached (merged by default), for evaluation or RL."""
    return load_model(model_cfg.model_copy(update={"adapter": str(adapter_dir), "merge_adapter": merge}))


# ====================================================================== the trainer
def training_args(sft_cfg: SFTConfig, out_dir: Path, cuda: bool):
    """TRL's SFTConfig for our settings; every default TRL changes from transformers is set explicitly."""
    from trl import SFTConfig as TRLConfig

    bf16, deepspeed = gpu_options("sft", sft_cfg.bf16, sft_cfg.deepspeed, sft_cfg.deepspeed_path(), cuda)
    return TRLConfig(
        output_dir=str(out_dir),
        learning_rate=sft_cfg.learning_rate,
        lr_scheduler_type=sft_cfg.lr_scheduler,
        warmup_steps=sft_cfg.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        weight_decay=sft_cfg.weight_decay,
        max_grad_norm=sft_cfg.max_grad_norm or 0.0,  # transformers clips only above 0
        num_train_epochs=sft_cfg.epochs,
        max_steps=sft_cfg.max_steps or -1,
        per_device_train_batch_size=sft_cfg.batch_size,
        gradient_accumulation_steps=sft_cfg.grad_accumulation,
        seed=sft_cfg.seed,
        data_seed=sft_cfg.seed,
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=sft_cfg.gradient_checkpointing,
        deepspeed=deepspeed,
        use_cpu=not cuda,
        logging_steps=sft_cfg.logging_steps,
        save_strategy="no",
        report_to="none",  # the caller logs to MLflow
        disable_tqdm=True,  # progress goes through logging (ProgressLog)
        remove_unused_columns=False,
        dataloader_num_workers=0,
        max_length=None,  # the prompt is already cut from its left in data.build_example
        packing=False,
        completion_only_loss=None,
        assistant_only_loss=False,
        shuffle_dataset=False,  # the Trainer's sampler shuffles with data_seed
    )


def gpu_options(section: str, bf16: bool | None, deepspeed: str | None, deepspeed_path, cuda: bool):
    """(bf16, DeepSpeed config path or None) for a trainer: both apply on the CUDA path only (SFT and RL share this)."""
    use_bf16 = cuda and torch.cuda.is_bf16_supported() if bf16 is None else (bf16 and cuda)
    if bf16 and not cuda:
        log.info("%s.bf16 is set but no CUDA device is used: training in float32", section)
    if deepspeed is not None and not cuda:
        log.info("%s.deepspeed=%r ignored: DeepSpeed is used on the CUDA path only", section, deepspeed)
    return use_bf16, (str(deepspeed_path) if deepspeed is not None and cuda else None)


def build_trainer(model: torch.nn.Module, tokenizer, sft_cfg: SFTConfig, data: ExampleSet, out_dir: Path,
                  cuda: bool | None = None, readout_ids: tuple[list[int], list[int]] | None = None):
    """An SFTTrainer over ``data`` for a model that already carries its trainable adapter; ``readout_ids`` (the
    yes and no spellings' tokens) switch on the answer-slot loss."""
    from datasets import Dataset

    from eagrl.llm.loading import float32_head

    cuda = next(model.parameters()).device.type == "cuda" if cuda is None else cuda
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    dataset = Dataset.from_list(data.examples)
    float32_head(model)  # the answer slot's two-way softmax and the NLL in float32 on a bfloat16 base
    trainer = AnswerSlotSFTTrainer(
        model=model,
        args=training_args(sft_cfg, out_dir, cuda),
        data_collator=SFTCollator(pad_id, pad_to_multiple_of=8 if cuda else None),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[ProgressLog()],
        sft_cfg=sft_cfg,
        readout_ids=readout_ids,
        class_weights=class_weights([ex["answer_label"] for ex in data.examples if ex["answer_pos"] >= 0]),
    )
    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts; ProgressLog logs them instead
    return trainer


def class_weights(labels: list[int]) -> tuple[float, float]:
    """(weight of label 0, of label 1) = n / (2 n_class); (1, 1) when a class is absent."""
    n, pos = len(labels), sum(labels)
    if not n or pos in (0, n):
        return 1.0, 1.0
    return n / (2.0 * (n - pos)), n / (2.0 * pos)


def answer_slot_logprob(logits: torch.Tensor, yes_ids: list[int], no_ids: list[int]) -> torch.Tensor:
    """(B, 2) log-probabilities of (no, yes) at the answer slot from its (B, V) logits: log of each word's mass
    (summed over spellings) over the two words' mass, the yes/no readout in log space."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    words = torch.stack([torch.logsumexp(lp[:, no_ids], dim=-1), torch.logsumexp(lp[:, yes_ids], dim=-1)], dim=-1)
    return torch.log_softmax(words, dim=-1)


class AnswerSlotSFTTrainer(SFTTrainer):
    """SFTTrainer whose loss adds the answer-slot term (module docstring). The loss of a micro-batch is a mean,
    so the Trainer divides it by the accumulation steps (``loss_is_scaled_for_ga = False``)."""

    def __init__(self, *args, sft_cfg: SFTConfig, readout_ids=None, class_weights=(1.0, 1.0), **kwargs):
        super().__init__(*args, **kwargs)
        self.sft_cfg, self.readout_ids = sft_cfg, readout_ids
        self.class_w = torch.tensor(class_weights if sft_cfg.class_weighted else (1.0, 1.0))
        self.loss_is_scaled_for_ga = False
        self._parts: dict[str, list[float]] = {"lm_loss": [], "answer_loss": [], "answer_accuracy": []}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss of one micro-batch. The output layer is applied only at the positions a loss reads (the
        labelled reasoning tokens' predecessors and the slots'): the (B, T, |V|) logits of a 600-token batch of 4
        over SmolLM2's 49k vocabulary are 0.5 GB in float32 before their gradient, most of it never read."""
        pos, y = inputs.pop("answer_pos", None), inputs.pop("answer_label", None)
        labels = inputs.pop("labels")
        base = causal_lm(model)
        hidden = base.get_decoder()(input_ids=inputs["input_ids"],
                                    attention_mask=inputs["attention_mask"]).last_hidden_state  # (B, T, H)
        head = base.get_output_embeddings()
        targets = labels[:, 1:]  # (B, T-1): token t+1 is predicted at t
        keep = targets != -100
        n_tok = keep.sum()
        loss = hidden.new_zeros((), dtype=torch.float32)
        if n_tok > 0 and self.sft_cfg.reasoning_weight > 0:
            logits = head(hidden[:, :-1][keep]).float()  # (N, V)
            lm = torch.nn.functional.cross_entropy(logits, targets[keep])
            loss = loss + self.sft_cfg.reasoning_weight * lm
            self._parts["lm_loss"].append(lm.item())
        if self.readout_ids is not None and pos is not None and bool((pos >= 0).any()):
            rows = (pos >= 0).nonzero(as_tuple=True)[0]
            slot_logits = head(hidden[rows, pos[rows] - 1])  # (b, V): the logits that predict the slot's token
            two = answer_slot_logprob(slot_logits, *self.readout_ids)  # (b, 2): (no, yes)
            yl = y[rows]
            w = self.class_w.to(two.device)[yl]
            # divided by the count, not by w.sum(): the weights average 1 over the training set, so this is the
            # class-weighted mean across batches; over one batch's own weights a single stay's weight cancels,
            # and at one stay a step the classes were not weighed at all (synthetic cohort: p 0.14 for every stay)
            ce = -(two.gather(1, yl[:, None])[:, 0] * w).sum() / len(rows)
            loss = loss + self.sft_cfg.answer_weight * ce
            self._parts["answer_loss"].append(ce.item())
            self._parts["answer_accuracy"].append(((two[:, 1] >= two[:, 0]).long() == yl).float().mean().item())
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:  # the parts of the loss since the last log line
            for k, v in self._parts.items():
                if v:
                    logs[k] = float(sum(v) / len(v))
                    v.clear()
        super().log(logs, *args, **kwargs)


class ProgressLog(TrainerCallback):
    """One log line per logging step: step/total, epoch, loss, learning rate."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            log.info("sft step %d/%d epoch %.2f loss %.4f lr %.2e", state.global_step, state.max_steps,
                     logs.get("epoch", 0.0), logs["loss"], logs.get("learning_rate", 0.0))


# ====================================================================== metrics
def loss_history(log_history: list[dict]) -> list[dict[str, float]]:
    keys = ("step", "epoch", "loss", "learning_rate", "grad_norm", "mean_token_accuracy", "entropy", "lm_loss",
            "answer_loss", "answer_accuracy")
    rows = []
    for entry in log_history:
        if "loss" in entry and "train_loss" not in entry:
            rows.append({k: float(entry[k]) for k in keys if isinstance(entry.get(k), (int, float))})
    return rows


def summary_metrics(history: list[dict], train_out, seconds: float, data: ExampleSet) -> dict[str, float]:
    steps = int(train_out.global_step)
    epochs = float(history[-1]["epoch"]) if history and "epoch" in history[-1] else 0.0
    tokens = sum(len(ex["input_ids"]) for ex in data.examples) * epochs
    out = {"train_loss": float(train_out.training_loss), "train_steps": steps, "train_seconds": seconds,
           "train_epochs": epochs, "train_tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
           "optimizer_steps": steps, "answer_tokens_trained": int(data.n_answer_targets * epochs),
           "reasoning_tokens_trained": int(data.n_target_tokens * epochs)}
    if history:
        out["first_loss"], out["last_loss"] = history[0]["loss"], history[-1]["loss"]
        for k in ("answer_loss", "answer_accuracy"):
            vals = [r[k] for r in history if k in r]
            if vals:
                out[f"first_{k}"], out[f"last_{k}"] = vals[0], vals[-1]
    return out
