"""Evaluation: metrics with bootstrap intervals, shared by the expert, the LLM stages and the reports."""
from eagrl.evaluate.metrics import (
    METRICS,
    auprc,
    auroc,
    bootstrap_distribution,
    brier,
    ece,
    evaluate_binary,
    evaluate_means,
    f1_at,
    paired_bootstrap,
    scalar_metrics,
)

__all__ = [
    "METRICS",
    "auprc",
    "auroc",
    "bootstrap_distribution",
    "brier",
    "ece",
    "evaluate_binary",
    "evaluate_means",
    "f1_at",
    "paired_bootstrap",
    "scalar_metrics",
]
