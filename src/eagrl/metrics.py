"""Binary-classification metrics with vectorised bootstrap intervals, shared by every stage.

Every metric is computed from an *index matrix* ``idx`` of shape (R, n): row r lists the test samples drawn
in resample r. The point estimate is the single row ``0..n-1``; a bootstrap is R rows drawn with
replacement. So the point estimate and the intervals run through the same code, and 1,000 resamples cost a
few array passes instead of 1,000 sklearn calls. No (R, n) weight matrix is formed: each statistic is a
``bincount`` of the drawn samples' keys.

* AUROC: Mann-Whitney statistic from tie-grouped ranks (ties count one half), as ``roc_auc_score``.
* AUPRC: average precision, sum over thresholds of (recall step) x precision, as
  ``average_precision_score`` (no interpolation).
  Both read one (R, G, 2) table: how many negatives and positives of each tie group of the scores (G
  distinct scores) each resample drew.
* F1 at a threshold (default 0.5, predicted positive when ``score >= threshold``), zero when undefined;
  ``max_f1_threshold`` picks a model's own threshold on another split (validation).
* Brier: mean squared error of the probability.
* ECE: expected calibration error over equal-width probability bins.

``evaluate_binary`` returns flat ``{"auroc": 0.91, "auroc_ci": [0.87, 0.94], ...}`` (optionally prefixed,
``test_auroc``); ``scalar_metrics`` turns the intervals into ``*_ci_low``/``*_ci_high`` numbers for MLflow.
``paired_bootstrap`` compares two models scored on the same labels with shared resamples.
``evaluate_means`` gives per-sample quantities (the well-formed flag, R_att) their mean and interval over the
same resamples (same ``n`` and ``seed`` give the same index matrix as ``evaluate_binary``).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

METRICS = ("auroc", "auprc", "f1", "brier", "ece")
_MAX_CELLS = 4_000_000  # resamples are processed in chunks of at most this many (R x n) cells


# ====================================================================== inputs
def _as_arrays(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values but y_score has {s.size}")
    if y.size == 0:
        raise ValueError("cannot score an empty set of predictions")
    if not np.isin(y, (0.0, 1.0)).all():
        bad = np.unique(y[~np.isin(y, (0.0, 1.0))])[:5]
        raise ValueError(f"y_true must be 0/1, got values such as {bad.tolist()}")
    if not np.isfinite(s).all():
        raise ValueError(f"y_score has {int((~np.isfinite(s)).sum())} non-finite values (NaN or inf)")
    return y, s


def _row_keys(idx: np.ndarray, key: np.ndarray, n_keys: int) -> np.ndarray:
    """(R, n) drawn samples -> (R, n_keys) how many draws of each key value (0..n_keys-1) every row made."""
    r = idx.shape[0]
    flat = (key[idx] + (np.arange(r) * n_keys)[:, None]).ravel()  # (R * n,)
    return np.bincount(flat, minlength=r * n_keys).reshape(r, n_keys)


class _Scorer:
    """The metrics of one score vector on fixed labels, for any (R, n) index matrix of resamples."""

    def __init__(self, y: np.ndarray, s: np.ndarray, threshold: float = 0.5, n_bins: int = 10):
        self.y, self.s, self.threshold, self.n_bins = y, s, threshold, n_bins
        self._groups: tuple[np.ndarray, int] | None = None

    def groups(self) -> tuple[np.ndarray, int]:
        """Key of each sample: 2 x (its tie group, ascending score) + its label; and the group count G."""
        if self._groups is None:
            uniq, inv = np.unique(self.s, return_inverse=True)
            self._groups = (inv.astype(np.intp) * 2 + self.y.astype(np.intp), uniq.size)
        return self._groups

    def __call__(self, idx: np.ndarray, metrics: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if "auroc" in metrics or "auprc" in metrics:
            key, g = self.groups()
            c = _row_keys(idx, key, 2 * g).reshape(-1, g, 2).astype(np.float64)  # (R, G, 2)
            neg, pos = c[..., 0], c[..., 1]  # (R, G) draws per tie group, ascending score
            if "auroc" in metrics:
                out["auroc"] = _auroc(neg, pos)
            if "auprc" in metrics:
                out["auprc"] = _auprc(neg[:, ::-1], pos[:, ::-1])
        if "f1" in metrics:
            out["f1"] = self._f1(idx)
        if "brier" in metrics:
            out["brier"] = ((self.s - self.y) ** 2)[idx].mean(axis=1)
        if "ece" in metrics:
            out["ece"] = self._ece(idx)
        return out

    def _f1(self, idx: np.ndarray) -> np.ndarray:
        pred = (self.s >= self.threshold).astype(np.intp)
        c = _row_keys(idx, 2 * self.y.astype(np.intp) + pred, 4).astype(np.float64)  # (R, 4) [y, pred]
        fp, fn, tp = c[:, 1], c[:, 2], c[:, 3]
        denom = 2 * tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, 2 * tp / denom, 0.0)  # sklearn's zero_division=0

    def _ece(self, idx: np.ndarray) -> np.ndarray:
        bins = np.clip((self.s * self.n_bins).astype(np.intp), 0, self.n_bins - 1)  # [0, 1/n), ..., [(n-1)/n, 1]
        r = idx.shape[0]
        flat = (bins[idx] + (np.arange(r) * self.n_bins)[:, None]).ravel()
        gap = np.bincount(flat, weights=(self.s - self.y)[idx].ravel(), minlength=r * self.n_bins)
        return np.abs(gap.reshape(r, self.n_bins)).sum(1) / idx.shape[1]  # (R,)


def _auroc(neg: np.ndarray, pos: np.ndarray) -> np.ndarray:
    neg_below = np.cumsum(neg, axis=1) - neg  # (R, G) negatives with a strictly lower score
    n_pos, n_neg = pos.sum(1), neg.sum(1)  # (R,)
    u = (pos * (neg_below + 0.5 * neg)).sum(1)  # (R,) Mann-Whitney U of the positives
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def _auprc(neg: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Tie groups in descending score order: each is one threshold."""
    tp, called = np.cumsum(pos, axis=1), np.cumsum(pos + neg, axis=1)  # (R, G)
    n_pos = pos.sum(1)  # (R,)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(called > 0, tp / called, 0.0)  # (R, G)
        return np.where(n_pos > 0, (pos * precision).sum(1) / n_pos, np.nan)


def _check_metrics(metrics: Sequence[str]) -> None:
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metric {bad[0]!r}: choose from {', '.join(METRICS)}")


def _points(y: np.ndarray, s: np.ndarray, metrics: Sequence[str], threshold: float = 0.5,
            n_bins: int = 10) -> dict[str, float]:
    _check_metrics(metrics)
    res = _Scorer(y, s, threshold, n_bins)(np.arange(y.size)[None, :], metrics)
    return {m: float(res[m][0]) for m in metrics}


# ====================================================================== point estimates
def _point(name: str, y_true, y_score, **kw) -> float:
    y, s = _as_arrays(y_true, y_score)
    return _points(y, s, [name], **kw)[name]


def auroc(y_true, y_score) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    return _point("auroc", y_true, y_score)


def auprc(y_true, y_score) -> float:
    """Average precision (area under the precision-recall curve, step-wise); NaN without positives."""
    return _point("auprc", y_true, y_score)


def f1_at(y_true, y_score, threshold: float = 0.5) -> float:
    """F1 of ``y_score >= threshold``; 0 when there is neither a positive nor a predicted positive."""
    return _point("f1", y_true, y_score, threshold=threshold)


def brier(y_true, y_score) -> float:
    """Mean squared error of the predicted probability."""
    return _point("brier", y_true, y_score)


def ece(y_true, y_score, n_bins: int = 10) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins of the predicted probability."""
    return _point("ece", y_true, y_score, n_bins=n_bins)


def max_f1_threshold(y_true, y_score) -> tuple[float, float]:
    """The threshold that maximises F1 of ``y_score >= threshold`` on these labels, and that F1.

    The candidates are the distinct scores (scikit-learn's ``precision_recall_curve``); among equal F1 the
    highest threshold wins (fewer positive calls for the same F1). Without a positive label no threshold gives
    F1 > 0: ``(nan, 0.0)``. Used to pick an operating point on a validation split, never on the split scored.
    """
    from sklearn.metrics import precision_recall_curve

    y, s = _as_arrays(y_true, y_score)
    if not y.any():
        return float("nan"), 0.0
    precision, recall, thresholds = precision_recall_curve(y, s)  # thresholds ascending; last (p, r) = (1, 0)
    p, r = precision[:-1], recall[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    best = int(np.flatnonzero(f1 == f1.max())[-1])  # ascending thresholds: the last maximiser is the highest
    return float(thresholds[best]), float(f1[best])


# ====================================================================== bootstrap
def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """The (n_boot, n) matrix of resampled positions: row r is one bootstrap test set."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _index_chunks(n: int, n_boot: int, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, rows) of ``bootstrap_indices(n, n_boot, seed)``, drawn chunk by chunk (same numbers:
    the generator's stream does not depend on how the rows are split), so (n_boot, n) never sits in memory."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_CELLS // n)
    for lo in range(0, n_boot, chunk):
        yield lo, rng.integers(0, n, size=(min(chunk, n_boot - lo), n))


def bootstrap_distribution(
    y_true,
    scores: Sequence | np.ndarray,
    metrics: Sequence[str] = METRICS,
    n_boot: int = 1000,
    seed: int = 0,
    threshold: float = 0.5,
    n_bins: int = 10,
) -> dict[str, np.ndarray]:
    """Each metric on each of ``n_boot`` resamples: ``{metric: (n_boot,)}``; NaN where undefined.

    ``scores`` may be one score vector (n,) or several (M, n) scored on the same labels; with several,
    every model sees the same resamples and the arrays are (M, n_boot), which is what a paired comparison
    needs.
    """
    s_all = np.atleast_2d(np.asarray(scores, dtype=np.float64))  # (M, n)
    y, _ = _as_arrays(y_true, s_all[0])
    for s in s_all:
        _as_arrays(y, s)
    _check_metrics(metrics)
    scorers = [_Scorer(y, s, threshold, n_bins) for s in s_all]
    out = {m: np.empty((len(s_all), n_boot)) for m in metrics}
    for lo, idx in _index_chunks(y.size, n_boot, seed):  # idx: (chunk, n)
        for i, scorer in enumerate(scorers):
            for m, v in scorer(idx, metrics).items():
                out[m][i, lo:lo + len(idx)] = v
    return {m: v[0] for m, v in out.items()} if np.ndim(scores) == 1 else out


def _interval(values: np.ndarray, ci: float) -> list[float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(values, [50 * (1 - ci), 50 * (1 + ci)])
    return [float(lo), float(hi)]


def evaluate_binary(
    y_true,
    y_score,
    *,
    prefix: str = "",
    metrics: Sequence[str] = METRICS,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    threshold: float = 0.5,
    n_bins: int = 10,
) -> dict[str, float | list[float]]:
    """Point estimates and percentile bootstrap intervals as one flat dict.

    ``{"auroc": 0.91, "auroc_ci": [0.87, 0.94], ..., "n": 73, "n_positive": 30}``, every key prefixed
    with ``prefix`` (e.g. ``"test_"``). ``n_boot=0`` skips the intervals.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    y, s = _as_arrays(y_true, y_score)
    out: dict[str, float | list[float]] = {}
    point = _points(y, s, metrics, threshold, n_bins)
    dist = bootstrap_distribution(y, s, metrics, n_boot, seed, threshold, n_bins) if n_boot > 0 else {}
    for m in metrics:
        out[f"{prefix}{m}"] = point[m]
        if n_boot > 0:
            out[f"{prefix}{m}_ci"] = _interval(dist[m], ci)
    out[f"{prefix}n"] = int(y.size)
    out[f"{prefix}n_positive"] = int(y.sum())
    return out


def paired_bootstrap(
    y_true,
    score_a,
    score_b,
    metric: str = "auroc",
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    threshold: float = 0.5,
    n_bins: int = 10,
) -> dict[str, float | list[float]]:
    """Difference ``metric(a) - metric(b)`` on shared resamples of the same labels.

    Returns ``{"a", "b", "diff", "diff_ci": [lo, hi], "rel_diff", "rel_diff_ci", "p_value"}``: ``rel_diff``
    is ``a / b - 1`` (the relative gain of a over b) with its interval from the same resamples; the p-value
    is the two-sided bootstrap share of resamples on the other side of zero (at least 1 / n_boot when all
    fall on one side).
    """
    y, sa = _as_arrays(y_true, score_a)
    _, sb = _as_arrays(y, score_b)
    a = _points(y, sa, [metric], threshold, n_bins)[metric]
    b = _points(y, sb, [metric], threshold, n_bins)[metric]
    dist = bootstrap_distribution(y, np.stack([sa, sb]), [metric], n_boot, seed, threshold, n_bins)[metric]
    d = dist[0] - dist[1]  # (n_boot,)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = dist[0] / dist[1] - 1.0  # (n_boot,)
    d = d[np.isfinite(d)]
    if d.size == 0:
        p = float("nan")
    else:
        p = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))
        p = max(p, 1.0 / d.size)
    rel_point = a / b - 1.0 if b else float("nan")
    return {"a": a, "b": b, "diff": a - b, "diff_ci": _interval(d, ci), "rel_diff": rel_point,
            "rel_diff_ci": _interval(rel, ci), "p_value": p}


def evaluate_means(
    values: dict[str, Sequence[float] | np.ndarray],
    *,
    prefix: str = "",
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, float | list[float]]:
    """Mean and percentile bootstrap interval of per-sample values, e.g. ``{"well_formed_rate": flags}``.

    Every array has one value per test sample (NaN is not allowed); all of them share the resamples of
    ``bootstrap_indices(n, n_boot, seed)``, the ones ``evaluate_binary`` uses for the same n and seed.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    arrays = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in values.items()}
    sizes = {k: a.size for k, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"every quantity needs one value per sample, got sizes {sizes}")
    for k, a in arrays.items():
        if a.size == 0:
            raise ValueError(f"cannot average an empty {k!r}")
        if not np.isfinite(a).all():
            raise ValueError(f"{k!r} has {int((~np.isfinite(a)).sum())} non-finite values")
    out: dict[str, float | list[float]] = {}
    if not arrays:
        return out
    n = next(iter(sizes.values()))
    stacked = np.stack(list(arrays.values()), axis=1)  # (n, K)
    if n_boot > 0:
        means = np.concatenate([np.stack([col[idx].mean(axis=1) for col in stacked.T], axis=1)  # (chunk, K)
                                for _, idx in _index_chunks(n, n_boot, seed)])  # (n_boot, K)
    for j, k in enumerate(arrays):
        out[f"{prefix}{k}"] = float(stacked[:, j].mean())
        if n_boot > 0:
            out[f"{prefix}{k}_ci"] = _interval(means[:, j], ci)
    return out


def scalar_metrics(metrics: dict[str, float | list[float]]) -> dict[str, float]:
    """``{"auroc_ci": [lo, hi]}`` -> ``{"auroc_ci_low": lo, "auroc_ci_high": hi}``: what MLflow logs."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, (list, tuple)) and len(v) == 2:
            out[f"{k}_low"], out[f"{k}_high"] = float(v[0]), float(v[1])
        elif isinstance(v, (int, float, np.floating, np.integer)):
            out[k] = float(v)
    return out


def metrics_json(metrics: dict) -> dict:
    """Keep numbers and two-number intervals only (the metrics.json contract)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, (int, float)) and math.isfinite(float(v)):
            out[k] = v
        elif isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
            out[k] = [float(v[0]), float(v[1])]
    return out
