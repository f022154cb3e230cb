"""Entropy-aware adaptive clipping (METHOD.md, Stage 2): H(tau), then eps(tau) over an update batch.

* :func:`trajectory_entropy`: H(tau), the mean entropy of the policy over the model-written tokens of the
  ``<important_features>`` field of a response, or over all its model-written tokens when that field is
  absent or has none. Tokens whose entropy is unknown (NaN: framework-inserted, or a backend that does not
  report it) are left out.
* :func:`adaptive_epsilon`: eps(tau) = eps_min + (eps_max - eps_min) (H(tau) - H_min) / (H_max - H_min), with
  H_min, H_max over the trajectories of the update batch, and (eps_min + eps_max) / 2 for all when they are
  equal. Trajectories without an H (NaN) get that midpoint too.
* :func:`clipped_objective`: the per-token PPO/GRPO surrogate with a lower bound 1 - eps_low and a
  per-trajectory upper bound 1 + eps(tau). The trainer itself runs TRL's loss with the same bounds; this
  function states the maths the tests pin TRL's loss against.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def trajectory_entropy(entropies: Sequence[float], mask: Sequence[bool],
                       span: tuple[int, int] | None = None, logprobs: Sequence[float] | None = None) -> float:
    """H(tau) of one response; NaN when no model-written token has a known entropy.

    Where the backend did not report entropies (vLLM) and ``logprobs`` are given, the surprisal of the sampled
    token, -log p(token), stands in for each one: its expectation under the policy is the entropy.
    """
    def mean_over(lo: int, hi: int) -> float:
        vals = []
        for i in range(lo, hi):
            if not mask[i]:
                continue
            h = entropies[i] if i < len(entropies) else math.nan
            if math.isnan(h) and logprobs is not None and i < len(logprobs):
                h = -float(logprobs[i])
            if not math.isnan(h):
                vals.append(float(h))
        return sum(vals) / len(vals) if vals else math.nan

    if span is not None and span[1] > span[0]:
        h = mean_over(*span)
        if not math.isnan(h):
            return h
    return mean_over(0, len(mask))


def adaptive_epsilon(entropy: torch.Tensor, eps_min: float, eps_max: float) -> torch.Tensor:
    """eps(tau) for each trajectory of the update batch, from its H(tau): (B,) -> (B,)."""
    h = entropy.to(torch.float32)
    known = ~torch.isnan(h)
    mid = torch.full_like(h, (eps_min + eps_max) / 2)
    if not bool(known.any()):
        return mid
    lo, hi = h[known].min(), h[known].max()
    if not bool(hi > lo):
        return mid
    eps = eps_min + (eps_max - eps_min) * (h - lo) / (hi - lo)
    return torch.where(known, eps, mid)


def clipped_objective(log_ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float,
                      eps_high: torch.Tensor | float) -> torch.Tensor:
    """Per-token loss -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A), r = exp(log_ratio).

    ``log_ratio`` (B, T) is log pi_theta - log pi_old per token, ``advantages`` (B,), ``eps_high`` (B,) or a float.
    """
    ratio = torch.exp(log_ratio)  # (B, T)
    adv = advantages.reshape(-1, 1)  # (B, 1)
    hi = eps_high.reshape(-1, 1) if torch.is_tensor(eps_high) else torch.tensor(float(eps_high))
    clipped = torch.clamp(ratio, 1 - torch.as_tensor(eps_low, dtype=ratio.dtype), 1 + hi)
    return -torch.min(ratio * adv, clipped * adv)
