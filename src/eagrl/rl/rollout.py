"""RL rollouts through the policy layer's structured generation, as TRL's ``rollout_func``, and the rewards.

TRL's GRPOTrainer calls ``rollout_func(prompts, trainer)`` once per generation batch with each prompt repeated
G times. Our dataset's ``prompt`` is a stay id (so no patient text reaches TRL's logs); :class:`StructuredRollout`
looks up that stay's chat-templated prompt ids, writes G responses with :class:`StructuredGenerator` (the
framework writes the tags, the model the fields, the answer token is drawn) from the model being trained,
and returns what TRL needs plus what the rewards and the clipping read:

* ``completion_ids`` / ``logprobs``: the response tokens and their sampling log-probs, then the EOS token
  (inserted, so TRL counts the response as terminated);
* ``env_mask``: 1 where the model wrote the token, 0 where the framework inserted it. TRL multiplies it into
  the loss mask (and into its entropy and clip statistics), so inserted tokens carry no loss;
* ``eagrl_probability`` / ``eagrl_features`` / ``eagrl_well_formed``: the parsed response, read by
  :func:`r_cls` and :func:`r_att`, TRL reward functions whose weighted sum is R;
* ``eagrl_entropy``: H(tau) (:func:`eagrl.rl.clip.trajectory_entropy`), from the entropies the backend
  recorded while sampling, so eps(tau) costs no extra forward pass;
* ``eagrl_readout_index``: with the yes/no readout, where the answer slot lies in ``completion_ids``. The
  probability is read there, teacher-forced on the response (never drawn); the token at the slot is set to the
  patient's label word (inserted, so no policy-gradient loss), and the trainer adds the answer-slot term,
  the label's log-likelihood at the slot (:mod:`eagrl.rl.trainer`). -1: none (digits readout, whose answer
  digits are drawn and trained by the policy gradient, as before).

Rollouts are seeded from (rl.seed, the optimiser step, the stay, j), so a resumed run samples what the
interrupted one would have.
"""
from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence

import torch

from eagrl.config.llm import GenerationConfig
from eagrl.config.reward import DEFAULT_CLS, ClsReward
from eagrl.llm.backends.base import sample_seed
from eagrl.llm.rewards import r_att as jaccard
from eagrl.llm.rewards import r_cls as calibration_reward
from eagrl.llm.structured import StructuredGenerator, answer_token
from eagrl.rl.clip import trajectory_entropy


class StructuredRollout:
    """``rollout_func`` for TRL: structured P_QD responses of the policy being trained."""

    def __init__(self, prompt_ids: dict[str, list[int]], features, gen_cfg: GenerationConfig, seed: int = 0,
                 batch_size: int = 8, prefix_cache_tokens: int = 16384, labels: dict[str, int] | None = None):
        self.prompt_ids = {str(k): list(map(int, v)) for k, v in prompt_ids.items()}
        self.features = features
        digits = gen_cfg.readout == "digits"  # the drawn digits are the answer; the yes/no slot is read, not drawn
        self.gen_cfg = gen_cfg.model_copy(update={"prompt_style": "pqd", "structured": True, "sample_readout": digits})
        self.labels = {str(k): int(v) for k, v in (labels or {}).items()}
        self.seed = int(seed)
        self.batch_size = batch_size
        self.prefix_cache_tokens = prefix_cache_tokens
        self._generator: StructuredGenerator | None = None
        self._model = None

    # ------------------------------------------------------------------ TRL entry point
    def __call__(self, prompts: Sequence[str], trainer) -> dict[str, list]:
        keys = [str(p) for p in prompts]
        missing = sorted({k for k in keys if k not in self.prompt_ids})
        if missing:
            raise KeyError(f"rollout asked for stays without a prompt: {missing[:5]}")
        groups = _runs(keys)  # [(key, count)] in order: TRL repeats each prompt G times in a row
        step = int(getattr(getattr(trainer, "state", None), "global_step", 0))
        seeds = [self.group_seed(step, key, i) for i, (key, _) in enumerate(groups)]
        eos = _eos_id(trainer.processing_class)
        was_training = bool(trainer.model.training)
        try:
            generator = self.generator(trainer)
            if hasattr(generator.backend, "model"):
                generator.backend.model.eval()  # no dropout while sampling; the trainer's mode is restored below
            with torch.no_grad():
                responses = []
                if len({n for _, n in groups}) == 1:  # TRL's groups are all G long: one batched call
                    done = generator.generate([self.prompt_ids[k] for k, _ in groups], n=groups[0][1], seed=seeds)
                    responses = [r for group in done for r in group]
                else:
                    for (key, n), s in zip(groups, seeds):
                        responses += generator.generate([self.prompt_ids[key]], n=n, seed=[s])[0]
        finally:
            trainer.model.train(was_training)
        out: dict[str, list] = {k: [] for k in ("prompt_ids", "completion_ids", "logprobs", "env_mask",
                                               "eagrl_probability", "eagrl_features", "eagrl_well_formed",
                                               "eagrl_entropy", "eagrl_n_model_tokens", "eagrl_readout_index")}
        slot = self.gen_cfg.readout == "yesno" and bool(self.labels)
        for key, r in zip((k for k, n in groups for _ in range(n)), responses):
            ids = list(r.token_ids)
            if slot and r.readout_index is not None:
                ids[r.readout_index] = answer_token(generator.backend, self.labels[key])  # the label's word
            out["prompt_ids"].append(list(self.prompt_ids[key]))
            out["completion_ids"].append(ids + [eos])
            out["logprobs"].append([float(x) for x in r.logprobs] + [0.0])
            out["env_mask"].append([int(m) for m in r.mask] + [0])
            out["eagrl_probability"].append(r.probability)
            out["eagrl_features"].append(list(r.parsed.features))
            out["eagrl_well_formed"].append(bool(r.well_formed))
            out["eagrl_entropy"].append(trajectory_entropy(r.entropies, r.mask, r.features_span, r.logprobs))
            out["eagrl_n_model_tokens"].append(int(sum(r.mask)))
            out["eagrl_readout_index"].append(int(r.readout_index) if slot and r.readout_index is not None else -1)
        return out

    def group_seed(self, step: int, key: str, index: int) -> int:
        return sample_seed(sample_seed(self.seed, step), zlib.crc32(f"{key}:{index}".encode()))

    # ------------------------------------------------------------------ the backend over the live model
    def generator(self, trainer) -> StructuredGenerator:
        """A generator over the trainer's current weights (vLLM's colocated engine when TRL runs one)."""
        if getattr(trainer, "use_vllm", False):
            from eagrl.llm.backends.vllm_backend import VLLMBackend

            backend = VLLMBackend.from_llm(trainer.vllm_generation.llm, trainer.processing_class)
            return StructuredGenerator(backend, self.gen_cfg, self.features)
        from eagrl.llm.backends.transformers_backend import TransformersBackend

        model = trainer.accelerator.unwrap_model(trainer.model)
        if self._generator is None or self._model is not model:
            backend = TransformersBackend(model, trainer.processing_class, batch_size=self.batch_size,
                                          prefix_cache_tokens=self.prefix_cache_tokens)
            self._generator, self._model = StructuredGenerator(backend, self.gen_cfg, self.features), model
        self._generator.backend.store.clear()  # the weights moved since the last batch: no stale keys/values
        return self._generator


# ====================================================================== rewards (TRL reward functions)
def r_cls(completions, label, eagrl_probability, eagrl_well_formed, cls_cfg: ClsReward = DEFAULT_CLS,
          **_) -> list[float]:
    """R_cls of each response against its patient's label; 0 for a malformed one."""
    return [calibration_reward(p, y, cls_cfg) if ok and p is not None else 0.0
            for p, y, ok in zip(eagrl_probability, label, eagrl_well_formed)]


def r_cls_with(cls_cfg: ClsReward):
    """:func:`r_cls` scoring with ``cls_cfg``, still named r_cls (TRL names a logged reward after its function)."""
    return functools.update_wrapper(functools.partial(r_cls, cls_cfg=cls_cfg), r_cls)


def r_att(completions, c_exp, eagrl_features, eagrl_well_formed, **_) -> list[float]:
    """R_att: Jaccard of the named features with the expert's C_exp; 0 for a malformed response."""
    return [jaccard(f, c) if ok else 0.0 for f, c, ok in zip(eagrl_features, c_exp, eagrl_well_formed)]


def _runs(keys: Sequence[str]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for k in keys:
        if out and out[-1][0] == k:
            out[-1] = (k, out[-1][1] + 1)
        else:
            out.append((k, 1))
    return out


def _eos_id(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "pad_token_id", None)
    return int(eos if eos is not None else 0)
