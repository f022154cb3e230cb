"""TRL's GRPOTrainer with what EAG-RL changes: per-trajectory upper clip bounds eps(tau), and its diagnostics.

Everything else is TRL's (pinned trl 1.16): sampling through ``rollout_func`` (:mod:`eagrl.rl.rollout`),
rewards and group-normalised advantages (``scale_rewards="group"``: A = (R - mean) / (std + 1e-4), TRL's
constant where METHOD writes 1e-6), the token-level loss (``loss_type="dapo"``), the optional KL term,
LoRA through peft, DeepSpeed and vLLM through its own arguments, checkpoints and resume.

Three steps are overridden, each small:

* :meth:`EAGRLTrainer._generate_and_score_completions` runs TRL's, then turns each response's H(tau) (the
  rollout recorded it while sampling) into eps(tau) over the whole update batch, gathered across processes,
  and carries it in the batch as ``eps_high`` (B,); it also logs the eps(tau) and H(tau) distributions and
  the KL to the start policy.
* With ``rl.advantage_std_floor`` > 0 the advantages are (R - group mean) / max(group std, floor)
  (:func:`floored_group_advantages`), recomputed from the rewards TRL's ``_calculate_rewards`` returned (kept by
  the override). TRL's (std + 1e-4) gives a group whose rewards differ by thousandths, as R_cls's do when the
  readout is near-certain on a stay, the same +-1 advantages as a group that disagrees about the label: the
  noise of the reward becomes the policy gradient. TRL has no option for a floor (``scale_rewards`` is group,
  batch or none), so this one is written here.
* :meth:`EAGRLTrainer._compute_loss` sets ``epsilon_low`` / ``epsilon_high`` to (B, 1) tensors for the
  duration of TRL's loss, which reads them only inside tensor expressions (the clamp and the clip-fraction
  masks). Both must be tensors: ``torch.clamp`` rejects a float lower bound with a tensor upper bound.
  With the yes/no readout it adds the *answer-slot term*: ``rl.readout_weight`` x the mean negative
  log-likelihood of the label under the readout itself, log P(y) / (P(yes) + P(no)) at temperature 1, each word
  summed over its spellings (:func:`eagrl.sft.train.answer_slot_logprob`, SFT's slot loss), at the slot the
  rollout wrote the label's word into (inserted, so the policy-gradient term never sees it). It is read from
  the last hidden states of the loss's own forward pass (a hook on the backbone: TRL's fused head keeps no
  logits), so no extra forward pass. Session 18 used TRL's per-token log-prob of the inserted token instead:
  a full-vocabulary likelihood at the sampling temperature, which is not the quantity the reward, the
  evaluation and serving read.

Why the extra term: the reward's R_cls depends on the parameters twice, through the text the policy samples
(the policy gradient acts there) and through the readout of that text, which is a differentiable function of
the weights (read, not sampled). The gradient of the expected reward is the sum of both; TRL's loss has only
the first, under which the answer slot would never be trained. The second, for R_cls's log-likelihood, is the
gradient of log p_y at the slot: this term (weighted by a config value rather than lam * w_ll / log(100),
since the policy term's advantages are normalised per group and so have no common scale with the reward).

The policy's last hidden states and LM head are float32 here (:func:`eagrl.llm.loading.float32_head`, so TRL's
chunked log-prob kernel computes in float32; TRL's own ``cast_lm_head_to_fp32`` does not handle a PEFT model with
tied embeddings): in bfloat16 every log-prob, ratio and clip decision would be rounded to 8 bits of mantissa.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from eagrl.config.rl import RLConfig
from eagrl.llm.loading import causal_lm
from eagrl.rl.clip import adaptive_epsilon

log = logging.getLogger(__name__)

EPS_FILE = "eps_values.json"  # in each checkpoint: every eps(tau) used up to its step, so a resumed run reports all


class EAGRLTrainer(GRPOTrainer):
    """GRPOTrainer whose upper clip bound is 1 + eps(tau) per trajectory when ``rl_cfg.adaptive_clip``."""

    def __init__(self, *args, rl_cfg: RLConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.rl_cfg = rl_cfg
        self.eps_values: list[float] = []  # every eps(tau) used, for the distribution plot
        self._capture = False  # True while the loss runs: its forward pass's last hidden states go to _hidden
        self._hidden: torch.Tensor | None = None
        self._yes_no: tuple | None = None  # the readout's yes and no spellings' tokens, the slot's (no, yes) words
        self._rewards_per_func: torch.Tensor | None = None  # the last batch's rewards, every process's rows

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, trial):
        if self.args.should_save:  # first, so a checkpoint the Trainer finished writing always has it
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / EPS_FILE).write_text(json.dumps(self.eps_values))
        super()._save_checkpoint(model, trial)

    def load_eps_values(self, checkpoint: str | Path) -> None:
        """The eps(tau) values the run had used when ``checkpoint`` was saved (checkpoints fall between generation
        batches, ``RLConfig.checkpoint_steps``, so none of them is sampled again after the resume)."""
        path = Path(checkpoint) / EPS_FILE
        if path.is_file():
            self.eps_values = [float(x) for x in json.loads(path.read_text())]
        else:
            log.warning("%s has no %s (saved before it was kept): the eps(tau) figures cover the resumed steps "
                        "only", checkpoint, EPS_FILE)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards_per_func

    # ------------------------------------------------------------------ scoring
    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        device = self.accelerator.device
        floor = self.rl_cfg.advantage_std_floor
        if floor > 0 and mode == "train":
            rewards = (self._rewards_per_func * self.reward_weights.to(device)).nansum(dim=1)
            rewards[torch.isnan(self._rewards_per_func).all(dim=1)] = math.nan  # unscorable, as TRL marks them
            adv, floored = floored_group_advantages(rewards, self.num_generations, floor)
            rank, n = self.accelerator.process_index, len(inputs)
            out["advantages"] = adv[rank * n:(rank + 1) * n]
            self._metrics[mode]["advantage/groups_floored"].append(floored)
        local_h = torch.tensor([float(x.get("eagrl_entropy", math.nan)) for x in inputs], device=device)
        all_h = self.accelerator.gather(local_h)  # H_min, H_max over the whole update batch, every process
        if self.rl_cfg.adaptive_clip:
            all_eps = adaptive_epsilon(all_h, self.rl_cfg.eps_min, self.rl_cfg.eps_max)
            rank, n = self.accelerator.process_index, len(inputs)
            out["eps_high"] = all_eps[rank * n:(rank + 1) * n].to(device)
        else:
            all_eps = torch.full_like(all_h, float(self.epsilon_high))
        self.eps_values += all_eps.tolist() if mode == "train" else []
        known = all_h[~torch.isnan(all_h)]
        metrics = self._metrics[mode]
        metrics["eps/mean"].append(all_eps.mean().item())
        metrics["eps/min"].append(all_eps.min().item())
        metrics["eps/max"].append(all_eps.max().item())
        metrics["eps/std"].append(all_eps.std(unbiased=False).item())
        if known.numel():
            metrics["entropy/features_mean"].append(known.mean().item())
            metrics["entropy/features_min"].append(known.min().item())
            metrics["entropy/features_max"].append(known.max().item())
        if self.rl_cfg.log_kl:
            metrics["kl_to_start"].append(self._kl_to_start(out))
        slots = [int(x.get("eagrl_readout_index", -1)) for x in inputs]
        if any(i >= 0 for i in slots):
            out["readout_index"] = torch.tensor(slots, device=device)  # (B,)
        return out

    @torch.no_grad()
    def _kl_to_start(self, batch: dict) -> float:
        """Mean per-token KL (k3 estimator) of the current policy to the start policy over model-written tokens.

        Both sides are TRL's own log-probs (its forward pass, at the sampling temperature, float32 head): the
        current policy's are ``old_per_token_logps`` when TRL computed them (several updates a batch), else one
        more forward pass. Not the rollout's ``logprobs``: the backend records those at temperature 1 (the raw
        distribution) and in its own precision, so against a reference at another temperature they read as a
        KL of ~0.4 before any update (TJH, T = 0.5, session 19)."""
        from trl.trainer.utils import use_adapter

        model = self.accelerator.unwrap_model(self.model)
        if not hasattr(model, "peft_config"):
            return math.nan
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)

        def logps():
            out, _, _ = self._get_per_token_logps_and_entropies(
                self.model, ids, attention, batch["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size)
            return out

        cur = batch.get("old_per_token_logps")
        if cur is None:
            cur = logps()
        ref = batch.get("ref_per_token_logps")
        if ref is None:
            with use_adapter(model, "ref" if "ref" in model.peft_config else None):
                ref = logps()
        mask = batch["completion_mask"] * batch.get("tool_mask", torch.ones_like(batch["completion_mask"]))
        delta = (ref - cur).float()
        per_token = torch.exp(delta) - delta - 1.0
        totals = self.accelerator.reduce(torch.stack([(per_token * mask).sum(), mask.sum().float()]), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    # ------------------------------------------------------------------ loss
    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        if not self._capture:
            return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        chunks: list[torch.Tensor] = []  # the backbone's last hidden states, one (b, L, H) per chunk TRL runs
        handle = _backbone(self.accelerator.unwrap_model(model)).register_forward_hook(
            lambda _m, _a, out: chunks.append(out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]))
        try:
            out = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        finally:
            handle.remove()
        if self._hidden is not None:  # the slot term would read one of two passes: say so, never guess
            raise RuntimeError("the policy loss ran two forward passes; the answer-slot term reads exactly one")
        self._hidden = torch.cat(chunks, dim=0)  # (B, L, H): the loss's forward pass, with its graph
        return out

    def _compute_loss(self, model, inputs):
        slots = inputs.get("readout_index")
        weight = self.rl_cfg.readout_weight
        if slots is None or weight <= 0 or not bool((slots >= 0).any()):
            return self._policy_loss(model, inputs)
        self._capture, self._hidden = True, None
        try:
            loss = self._policy_loss(model, inputs)
            hidden = self._hidden  # (B, L, H)
        finally:
            self._capture, self._hidden = False, None
        rows = (slots >= 0).nonzero(as_tuple=True)[0]
        two, y = self._slot_readout(model, hidden, inputs["completion_ids"], rows, slots[rows])
        nll = -two.gather(1, y[:, None])[:, 0].mean()
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        metrics["readout/nll"].append(self.accelerator.gather(nll.detach()).mean().item())
        hit = ((two[:, 1] >= two[:, 0]).long() == y).float().mean()
        metrics["readout/accuracy"].append(self.accelerator.gather(hit.detach()).mean().item())
        scale = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        return loss + weight * nll / scale

    def _slot_readout(self, model, hidden, completion_ids, rows, slots):
        """((b, 2) readout log-probs of (no, yes) at the given rows' slots, (b,) their labels). The hidden state
        that predicts completion token j sits at position L - C + j - 1 (TRL left-pads the prompts)."""
        from eagrl.sft.train import answer_slot_logprob

        if self._yes_no is None:
            from eagrl.llm.structured import answer_words, tokenizer_encode, yes_no_ids

            encode = tokenizer_encode(self.processing_class)
            self._yes_no = (*yes_no_ids(encode), answer_words(encode))
        yes, no, (no_word, yes_word) = self._yes_no
        # the batch's tensors were made under torch.inference_mode (TRL's sampling); an index autograd keeps for
        # the backward pass must be a normal tensor
        rows, slots, completion_ids = rows.clone(), slots.clone(), completion_ids.clone()
        at = hidden.size(1) - completion_ids.size(1) + slots - 1
        head = causal_lm(self.accelerator.unwrap_model(model)).get_output_embeddings()
        h = hidden[rows, at].to(head.weight.device, head.weight.dtype)  # (b, H)
        two = answer_slot_logprob(head(h), yes, no)  # (b, 2), temperature 1
        word = completion_ids[rows, slots]  # the label's word the rollout wrote at the slot (answer_words)
        known = (word == yes_word) | (word == no_word)
        if not bool(known.all()):
            raise RuntimeError(f"the answer slot holds token(s) {word[~known].tolist()}, neither the yes word's "
                               f"{yes_word} nor the no word's {no_word}: the rollout's slot index and the completion "
                               "disagree")
        return two, (word == yes_word).long()

    def _policy_loss(self, model, inputs):
        """TRL's loss, with the per-trajectory upper bounds when the batch carries them."""
        eps = inputs.get("eps_high")
        if eps is None:
            return super()._compute_loss(model, inputs)
        low, high = self.epsilon_low, self.epsilon_high
        self.epsilon_high = eps.reshape(-1, 1)  # (B, 1)
        self.epsilon_low = torch.full_like(self.epsilon_high, float(low))  # (B, 1): clamp wants both as tensors
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self.epsilon_low, self.epsilon_high = low, high


def floored_group_advantages(rewards: torch.Tensor, num_generations: int, floor: float) -> tuple[torch.Tensor, float]:
    """(R - group mean) / max(group std, floor) for consecutive groups of ``num_generations`` rewards (B,), NaN
    (unscorable) rows left out of the group's statistics and given 0; and the share of groups the floor applied to.

    The std is TRL's (NaN-aware, Bessel-corrected), so above the floor the advantages are TRL's to within its 1e-4.
    """
    from trl.trainer.utils import nanstd

    groups = rewards.view(-1, num_generations)
    mean = torch.nanmean(groups, dim=1, keepdim=True)
    std = nanstd(groups, dim=1, keepdim=True)
    std = torch.nan_to_num(std, nan=0.0)
    adv = (groups - mean) / std.clamp_min(floor)
    return torch.nan_to_num(adv, nan=0.0).view(-1), (std < floor).float().mean().item()


def _backbone(model):
    """The module whose output is the last hidden states, the one TRL's fused head projects."""
    return causal_lm(model).get_decoder()


class MlflowSteps(TrainerCallback):
    """Every logged step's figures into the active MLflow run, at the optimiser step.

    Written instead of transformers' MLflowCallback, which also logs every TrainingArguments field as a run
    parameter and may end a run it did not start; the stage owns its run.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        try:
            import mlflow
        except ImportError:  # a bare training box (run_rl alone) without the tracking extra
            return
        if not logs or mlflow.active_run() is None:
            return
        values = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and math.isfinite(float(v))}
        if values:
            mlflow.log_metrics({f"rl/{k}": v for k, v in values.items()}, step=int(state.global_step))


class ProgressLog(TrainerCallback):
    """One log line per logged step: step/total, then the sampling's figures (reward and its parts, groups without
    advantage, eps(tau), KL) on a step that sampled a generation batch, the update's (readout NLL and accuracy,
    entropy, clip-high) on every step. The later updates of a batch (``rl.updates_per_batch``) sample nothing."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or "train_loss" in logs:
            return

        def v(key: str) -> float:  # TRL logs a figure with no value at this step as None, or not at all
            x = logs.get(key)
            return math.nan if x is None else float(x)

        parts = [f"rl step {state.global_step}/{state.max_steps}"]
        if logs.get("reward") is not None:
            parts.append(f"reward {v('reward'):.3f} (R_cls {v('rewards/r_cls/mean'):.3f}, R_att "
                         f"{v('rewards/r_att/mean'):.3f}), groups without advantage {v('frac_reward_zero_std'):.2f}, "
                         f"eps {v('eps/mean'):.3f} [{v('eps/min'):.3f}, {v('eps/max'):.3f}], kl {v('kl_to_start'):.4f}")
            if logs.get("advantage/groups_floored") is not None:
                parts.append(f"groups under the std floor {v('advantage/groups_floored'):.2f}")
        else:
            parts.append("the batch's next update")
        if logs.get("readout/nll") is not None:
            parts.append(f"readout NLL {v('readout/nll'):.3f} acc {v('readout/accuracy'):.2f}")
        parts.append(f"entropy {v('entropy'):.3f} clip-high {v('clip_ratio/high_mean'):.3f}")
        log.info(", ".join(parts))
