"""The EAG-RL reward: R = lam * R_cls + (1 - lam) * R_att, and 0 for a malformed response.

* ``r_att``: Jaccard overlap of the features the LLM named (C_llm, unknown names included, so naming
  things outside the schema costs overlap) with the expert's top-k features (C_exp).
* ``r_cls``: 0.5 * (1 - (y - p)^2) + 0.5 * 1[(p >= 0.5) == y], a calibration term plus a correct-side term,
  in [0, 1].

Each is a small pure function of plain values, so the MCTS, the RL trainer and the tests call the same code.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from eagrl.llm.parse import ParsedResponse

DEFAULT_LAMBDA = 0.6


def r_att(c_llm: Iterable[str], c_exp: Iterable[str]) -> float:
    """|C_llm & C_exp| / |C_llm | C_exp|; 0 when both are empty."""
    a, b = set(c_llm), set(c_exp)
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def r_cls(p: float, y: int | float) -> float:
    """0.5 (1 - (y - p)^2) + 0.5 1[(p >= 0.5) == y] for a probability p (clipped to [0, 1]) and label y in {0, 1}."""
    p = min(1.0, max(0.0, float(p)))
    y = int(y)
    return 0.5 * (1.0 - (y - p) ** 2) + 0.5 * float(int(p >= 0.5) == y)


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


def reward(parsed: ParsedResponse, label: int, c_exp: Iterable[str], lam: float = DEFAULT_LAMBDA) -> Reward:
    """The reward of one parsed response; a malformed one (or one without a probability) gets 0."""
    if not parsed.well_formed or parsed.probability is None:
        return Reward(0.0, 0.0, 0.0, False)
    rc = r_cls(parsed.probability, label)
    ra = r_att(parsed.features, c_exp)
    return Reward(composite(rc, ra, lam), rc, ra, True)
