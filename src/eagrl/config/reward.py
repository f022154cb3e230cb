"""The ``reward`` section: how R_cls scores the answer slot's probability (MCTS and RL share it), and the default
lambda of R = lam * R_cls + (1 - lam) * R_att. The reward functions themselves are in :mod:`eagrl.llm.rewards`."""
from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from eagrl.config.section import Section

DEFAULT_LAMBDA = 0.6


class ClsReward(Section):
    """How R_cls scores the probability (mounted as ``reward`` in the config; MCTS and RL share it)."""

    form: Literal["loglik", "brier"] = Field("loglik", description="loglik: the label's log-likelihood plus a "
                                             "separation bonus (default); brier: METHOD's earlier Brier form.")
    w_ll: float = Field(2 / 3, ge=0.0, description="loglik: weight of the log-likelihood term.")
    w_sep: float = Field(1 / 3, ge=0.0, description="loglik: weight of the correct-side bonus 1[(p >= 0.5) == y].")
    clip: float = Field(0.01, gt=0.0, lt=0.5, description="loglik: p is clipped to [clip, 1 - clip].")

    @model_validator(mode="after")
    def _check(self) -> "ClsReward":
        if self.form == "loglik" and not math.isclose(self.w_ll + self.w_sep, 1.0, abs_tol=1e-6):
            raise ValueError(f"reward.w_ll + reward.w_sep must be 1 so that R_cls lies in [0, 1], "
                             f"got {self.w_ll} + {self.w_sep}")
        return self


DEFAULT_CLS = ClsReward()
