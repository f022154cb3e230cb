"""Perturbations of the model input for the robustness experiments, through the normal serialisation.

* Feature-order shuffles: :func:`shuffled` sets ``GenerationConfig.shuffle_fraction``, so
  :func:`eagrl.llm.prompt.build_prompt` moves that share of feature lines among their own positions (seeded
  per stay); each line keeps its name, unit, range and values together.
* Value noise: :func:`with_value_noise` returns a copy of the cohort whose raw visit values (what prompts
  show) carry Gaussian noise of ``level`` train standard deviations per feature; missing values stay
  missing, non-negative features stay non-negative, the expert's normalised table is left as it was.
"""
from __future__ import annotations

import dataclasses
import warnings
import zlib

import numpy as np

from eagrl.config.llm import GenerationConfig
from eagrl.data.cohort import Cohort
from eagrl.errors import DataError


def shuffled(gen: GenerationConfig, level: float, seed: int = 0) -> GenerationConfig:
    """The generation config that shuffles the order of ``level`` of the feature lines."""
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"shuffle level must be in [0, 1], got {level}")
    return gen.model_copy(update={"shuffle_fraction": float(level), "shuffle_seed": int(seed)})


def with_value_noise(cohort: Cohort, level: float, seed: int = 0) -> Cohort:
    """A copy of ``cohort`` whose ``visits`` values are x + level * sd_train(feature) * N(0, 1)."""
    if level < 0:
        raise ValueError(f"noise level must be non-negative, got {level}")
    names = cohort.feature_names
    visits = cohort.visits.copy()
    x = visits[names].to_numpy(dtype=np.float64)  # (V, F)
    train_ids = set(cohort.split_ids("train"))
    train = x[visits["stay_id"].isin(train_ids).to_numpy()]  # (V_train, F)
    if train.shape[0] == 0:
        raise DataError(f"the {cohort.dataset}/{cohort.task} cohort has no train visits to scale the noise by")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN features: no spread, so no noise
        sd = np.nan_to_num(np.nanstd(train, axis=0), nan=0.0)  # (F,)
    lowest = np.where(np.isnan(train), np.inf, train).min(axis=0)  # (F,)
    rng = np.random.default_rng([int(seed), zlib.crc32(f"{level:.6f}".encode())])
    noisy = x + level * sd * rng.standard_normal(x.shape)  # (V, F); NaN + noise stays NaN
    noisy = np.where((lowest >= 0) & np.isfinite(noisy), np.maximum(noisy, 0.0), noisy)
    visits[names] = noisy
    meta = {**cohort.meta, "value_noise": {"level": float(level), "seed": int(seed)}}
    return dataclasses.replace(cohort, visits=visits, meta=meta)
