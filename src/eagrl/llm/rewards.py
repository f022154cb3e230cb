"""The EAG-RL reward: R = lam * R_cls + (1 - lam) * R_att, and 0 for a malformed response.

* ``r_att``: Jaccard overlap of the features the LLM named (C_llm, unknown names included, so naming
  things outside the schema costs overlap) with the expert's top-k features (C_exp).
* ``r_cls``: a proper scoring rule on the answer slot's probability p, in [0, 1] (:class:`ClsReward`):
  ``loglik`` (default, the EAG-RL authors' choice): w_ll * (1 + log(p_y) / log(1 / clip)) + w_sep *
  1[(p >= 0.5) == y], with p_y the probability of the true label and p clipped to [clip, 1 - clip];
  ``brier`` (METHOD's earlier form): 0.5 * (1 - (y - p)^2) + 0.5 * 1[(p >= 0.5) == y].

The log-likelihood term is strictly proper and steep where the Brier term is flat: a positive read at 0.01 and
one read at 0.1 differ by a third of the reward under it, by 0.085 under Brier, so a confidently wrong readout
is what the policy learns to leave first. Each function is small and pure, so the MCTS, the RL trainer and the tests
call the same code.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from eagrl.config.reward import DEFAULT_CLS, DEFAULT_LAMBDA, ClsReward
from eagrl.llm.parse import ParsedResponse


def r_att(c_llm: Iterable[str], c_exp: Iterable[str]) -> float:
    """|C_llm & C_exp| / |C_llm | C_exp|; 0 when both are empty."""
    a, b = set(c_llm), set(c_exp)
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def r_cls(p: float, y: int | float, cfg: ClsReward = DEFAULT_CLS) -> float:
    """R_cls in [0, 1] of a probability p (clipped to [0, 1]) for a label y in {0, 1} (module docstring)."""
    p = min(1.0, max(0.0, float(p)))
    y = int(y)
    side = float(int(p >= 0.5) == y)
    if cfg.form == "brier":
        return 0.5 * (1.0 - (y - p) ** 2) + 0.5 * side
    p_y = min(1.0 - cfg.clip, max(cfg.clip, p if y == 1 else 1.0 - p))
    return cfg.w_ll * (1.0 + math.log(p_y) / math.log(1.0 / cfg.clip)) + cfg.w_sep * side


def composite(r_cls_value: float, r_att_value: float, lam: float = DEFAULT_LAMBDA) -> float:
    """lam * R_cls + (1 - lam) * R_att."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    return lam * r_cls_value + (1.0 - lam) * r_att_value


@dataclass(frozen=True)
class Reward:
    total: float
    r_cls: float
    r_att: float
    well_formed: bool


def reward(parsed: ParsedResponse, label: int, c_exp: Iterable[str], lam: float = DEFAULT_LAMBDA,
           cls_cfg: ClsReward = DEFAULT_CLS) -> Reward:
    """The reward of one parsed response; a malformed one (or one without a probability) gets 0."""
    if not parsed.well_formed or parsed.probability is None:
        return Reward(0.0, 0.0, 0.0, False)
    rc = r_cls(parsed.probability, label, cls_cfg)
    ra = r_att(parsed.features, c_exp)
    return Reward(composite(rc, ra, lam), rc, ra, True)
