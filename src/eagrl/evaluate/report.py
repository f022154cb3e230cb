"""The evaluation report: one self-contained HTML page (jinja2) with the tables and matplotlib figures.

``write_report(out_dir, context)`` draws ROC, precision-recall and calibration curves of every scored model,
the robustness curves (AUROC against the shuffle and noise level, with intervals) and writes each figure as
a PNG beside ``report.html``, which embeds the same images (base64), so the page can be mailed or logged to
MLflow alone.
"""
from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

TEMPLATE = "evaluate_report.html"


@dataclass
class ReportContext:
    title: str
    dataset: str
    task: str
    split: str
    n_stays: int
    n_positive: int
    n_boot: int
    ci: float
    table: pd.DataFrame  # one row per entry: name, label, group, status, note, metrics
    paired: pd.DataFrame  # entry, reference, metric, a, b, diff, diff_ci, rel_diff, rel_diff_ci, p_value
    predictions: dict[str, pd.DataFrame]  # entry label -> stay_id, label, probability
    robustness: pd.DataFrame  # entry, perturbation, level, auroc, auroc_ci, auprc, ...
    generalisation: pd.DataFrame  # entry, source, target, n, auroc, auroc_ci, ...
    notes: list[str] = field(default_factory=list)
    n_bins: int = 10
    threshold: float = 0.5


# ====================================================================== figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def roc_figure(predictions: dict[str, pd.DataFrame], path: Path) -> Path | None:
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    drawn = False
    for name, p in predictions.items():
        if p["label"].nunique() < 2:
            continue
        fpr, tpr, _ = roc_curve(p["label"], p["probability"])
        ax.plot(fpr, tpr, label=f"{name} ({roc_auc_score(p['label'], p['probability']):.3f})")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (AUROC)")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def pr_figure(predictions: dict[str, pd.DataFrame], path: Path) -> Path | None:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    drawn, prevalence = False, None
    for name, p in predictions.items():
        if p["label"].sum() == 0:
            continue
        prec, rec, _ = precision_recall_curve(p["label"], p["probability"])
        ax.step(rec, prec, where="post",
                label=f"{name} ({average_precision_score(p['label'], p['probability']):.3f})")
        prevalence, drawn = float(p["label"].mean()), True
    if not drawn:
        plt.close(fig)
        return None
    ax.axhline(prevalence, ls=":", c="grey")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (AUPRC)", ylim=(0, 1.02))
    ax.legend(fontsize=7, loc="upper right")
    return _save(fig, path)


def calibration_figure(predictions: dict[str, pd.DataFrame], path: Path, n_bins: int = 10) -> Path | None:
    from sklearn.calibration import calibration_curve

    if not predictions:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    for name, p in predictions.items():
        frac, mean = calibration_curve(p["label"], np.clip(p["probability"], 0, 1), n_bins=n_bins, strategy="uniform")
        ax.plot(mean, frac, marker="o", ms=3, label=name)
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="mean predicted probability", ylabel="observed positive rate", title="Calibration",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


def robustness_figure(rob: pd.DataFrame, perturbation: str, path: Path) -> Path | None:
    part = rob[rob["perturbation"].isin([perturbation, "none"])] if len(rob) else rob
    if part.empty or not (part["perturbation"] == perturbation).any():
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    for name, g in part.groupby("entry", sort=False):
        g = g.sort_values("level")
        lo = [c[0] if isinstance(c, (list, tuple)) else np.nan for c in g["auroc_ci"]]
        hi = [c[1] if isinstance(c, (list, tuple)) else np.nan for c in g["auroc_ci"]]
        line, = ax.plot(g["level"], g["auroc"], marker="o", label=name)
        ax.fill_between(g["level"], lo, hi, alpha=0.15, color=line.get_color())
    x = "share of feature lines shuffled" if perturbation == "shuffle" else "value noise (train SDs)"
    ax.set(xlabel=x, ylabel="AUROC", title=f"Robustness: {perturbation}")
    ax.axhline(0.5, ls=":", c="grey")
    ax.legend(fontsize=7)
    return _save(fig, path)


# ====================================================================== page
def fmt(value, ci=None, digits: int = 3) -> str:
    """``0.812 [0.770, 0.851]``; an em dash for a missing or undefined value."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(value)):
        return "—"
    text = f"{value:.{digits}f}"
    if isinstance(ci, (list, tuple, np.ndarray)) and len(ci) == 2 and all(math.isfinite(float(c)) for c in ci):
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text


def _embed(path: Path | None) -> str | None:
    return None if path is None else "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def write_report(out_dir: str | Path, ctx: ReportContext) -> Path:
    """Draw the figures into ``out_dir`` and write ``out_dir/report.html``; returns its path."""
    import jinja2

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "roc": roc_figure(ctx.predictions, out / "roc.png"),
        "pr": pr_figure(ctx.predictions, out / "pr.png"),
        "calibration": calibration_figure(ctx.predictions, out / "calibration.png", ctx.n_bins),
        "robustness_shuffle": robustness_figure(ctx.robustness, "shuffle", out / "robustness_shuffle.png"),
        "robustness_noise": robustness_figure(ctx.robustness, "noise", out / "robustness_noise.png"),
    }
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parents[1] / "templates"),
                             autoescape=jinja2.select_autoescape(["html"]))
    env.filters["fmt"] = fmt
    html = env.get_template(TEMPLATE).render(
        ctx=ctx, images={k: _embed(v) for k, v in figures.items()},
        table=ctx.table.to_dict("records"), paired=ctx.paired.to_dict("records"),
        robustness=ctx.robustness.to_dict("records"), generalisation=ctx.generalisation.to_dict("records"),
        ci_pct=round(100 * ctx.ci),
    )
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    return path
