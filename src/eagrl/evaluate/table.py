"""The comparison table: one row per model and split (:class:`Evaluation`), the paired bootstrap differences
against the reference rows, the generalisation gains, and the CSV/JSON files the report and users read."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from eagrl.config.evaluate import EvaluateConfig
from eagrl.evaluate.score import aligned
from eagrl.metrics import paired_bootstrap

SCORED, SKIPPED, FAILED = "scored", "skipped", "failed"  # a table row's status


@dataclass
class Evaluation:
    """Everything the stage computed; the report and the files are views of it."""

    table: list[dict] = field(default_factory=list)
    paired: list[dict] = field(default_factory=list)
    robustness: list[dict] = field(default_factory=list)
    generalisation: list[dict] = field(default_factory=list)
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)  # entry name -> table predictions
    perturbed: dict[tuple[str, str, float], pd.DataFrame] = field(default_factory=dict)
    transfer: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)  # (target, entry) -> predictions
    notes: list[str] = field(default_factory=list)

    def metrics(self, split: str) -> dict:
        out: dict = {}
        for row in self.table:
            if row["status"] == SCORED:
                out.update({f"{row['name']}_{split}_{k}": v for k, v in row["metrics"].items()})
        for p in self.paired:
            key = f"{p['entry']}_vs_{p['reference']}_{p['metric'].replace('@', '_at_')}"  # MLflow: no @
            out.update({f"{key}_{k}": p[k] for k in ("diff", "diff_ci", "rel_diff", "rel_diff_ci", "p_value")})
        for r in self.robustness:
            if r["perturbation"] != "none":
                key = f"{r['entry']}_{r['perturbation']}{r['level']:g}"
                out.update({f"{key}_{k}": r[k] for k in ("auroc", "auroc_ci", "auprc", "auprc_ci") if k in r})
        for g in self.generalisation:
            if g["status"] == SCORED:
                key = f"{g['entry']}_on_{g['target']}"
                out.update({f"{key}_{k}": g[k] for k in ("auroc", "auroc_ci", "auprc", "auprc_ci") if k in g})
        out.update({f"n_models_{s}": sum(r["status"] == s for r in self.table) for s in (SCORED, SKIPPED, FAILED)})
        out["n_models_reused"] = sum(bool(r.get("reused_from")) for r in self.table)
        return out


# ====================================================================== paired comparisons
def paired_rows(ecfg: EvaluateConfig, ev: Evaluation) -> None:
    order = [r["name"] for r in ev.table]
    labels = {r["name"]: r["label"] for r in ev.table}
    for i, ref in enumerate(ecfg.references):
        if ref not in ev.predictions:
            ev.notes.append(f"paired comparisons against {labels.get(ref, ref)} left out: it was not scored")
            continue
        for name in order:
            if name == ref or name not in ev.predictions or name in ecfg.references[:i]:
                continue
            ev.paired += pair_rows(ecfg, name, ref, ev.predictions[name], ev.predictions[ref], ecfg.paired_metrics)
    # robustness: each perturbed model against each reference perturbed the same way
    for (name, pert, level), pred in ev.perturbed.items():
        for ref in ecfg.references:
            other = ev.perturbed.get((ref, pert, level))
            if ref != name and other is not None and (name not in ecfg.references
                                                       or ecfg.references.index(name) > ecfg.references.index(ref)):
                ev.paired += pair_rows(ecfg, name, ref, pred, other, ["auroc"], suffix=f"@{pert}{level:g}")


def pair_rows(ecfg, name, ref, a, b, metrics, suffix: str = "") -> list[dict]:
    y, pa, pb = aligned(a, b)
    rows = []
    for metric in metrics:
        res = paired_bootstrap(y, pa, pb, metric, n_boot=ecfg.n_boot, ci=ecfg.ci, seed=ecfg.seed,
                               threshold=ecfg.threshold, n_bins=ecfg.n_bins)
        rows.append({"entry": name, "reference": ref, "metric": metric + suffix, **res})
    return rows


def generalisation_gains(ecfg: EvaluateConfig, ev: Evaluation, target_keys: list[str], source: str) -> None:
    scored_names = {r["entry"] for r in ev.generalisation}
    tabular = {m.name for m in ecfg.models if m.kind == "tabular"}
    for name in ecfg.generalisation.models:  # entries never scored still get a visible row per target
        if name not in scored_names and name not in tabular:
            row = next(r for r in ev.table if r["name"] == name)
            for key in target_keys:
                ev.generalisation.append({"entry": name, "source": source, "target": key, "n": None,
                                          "status": row["status"] if row["status"] != SCORED else SKIPPED,
                                          "note": row["note"]})
    for row in ev.generalisation:
        base = ev.transfer.get((row["target"], "pqd"))
        mine = ev.transfer.get((row["target"], row["entry"]))
        if base is None or mine is None or row["entry"] == "pqd":
            continue
        res = paired_bootstrap(*aligned(mine, base), "auroc", n_boot=ecfg.n_boot, ci=ecfg.ci, seed=ecfg.seed)
        row.update(diff_vs_pqd=res["diff"], diff_vs_pqd_ci=res["diff_ci"])


# ====================================================================== outputs
def _flat_row(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if k == "metrics":
            out.update(_flat_row(v))
        elif isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
            out[f"{k}_low"], out[f"{k}_high"] = v
        else:
            out[k] = v
    return out


def write_tables(ev: Evaluation, out: Path) -> None:
    for name, rows in (("table", ev.table), ("paired", ev.paired), ("robustness", ev.robustness),
                       ("generalisation", ev.generalisation)):
        pd.DataFrame([_flat_row(r) for r in rows]).to_csv(out / f"{name}.csv", index=False)
    (out / "notes.json").write_text(json.dumps(ev.notes, indent=1))
