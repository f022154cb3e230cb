"""From the searched trees to the SFT set: the best trajectories of each patient, classes balanced.

Per patient, the completed trajectories are ranked by the search reward R (highest first, then by rollout
order); only well-formed ones qualify, and, with the digits readout (where SFT trains the drawn answer), only
those on the correct side of 0.5 (``(p >= 0.5) == label``). With the yes/no readout SFT trains the answer slot
on the label whatever the readout said, so every searched patient keeps its best trajectories; identical
response texts count once (``dedupe``); the first ``top_k_per_patient`` are kept. Then, with ``balance``,
the larger class (by label) is cut to the size of the smaller, keeping its highest-R trajectories. When one
class has none at all, balancing would leave nothing, so the set is kept as it is and a warning says so.

With the yes/no readout the set also carries, for every patient it keeps, each other well-formed rollout as a
*slot-only* record (``"train_text": false``, :func:`slot_only_records`): SFT trains no reasoning token of it, only
its answer slot on the label. The slot is then trained on every rollout of a stay, so on the union the text carries
no net cue of the label. Trained on the selected text alone, the slot learns to read that cue, which the selection
by R (R_cls knows the label) wrote there, and not the patient: on TJH it fitted the selected texts (0.948 AUROC) and
ranked the same stays at 0.301 on their other rollouts (docs/results.md, session 16).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

from eagrl.config.mcts import MCTSConfig

log = logging.getLogger(__name__)

RECORD_FIELDS = ("stay_id", "label", "c_exp", "prompt_text", "prompt_ids", "response", "token_ids", "mask",
                 "readout_index", "r",
                 "r_cls", "r_att", "r_att_expert", "probability", "n_steps", "rollout")


def correct_side(probability: float | None, label: int) -> bool:
    return probability is not None and (float(probability) >= 0.5) == bool(int(label))


def _record(patient: dict, t: dict) -> dict:
    """One stored trajectory of a patient as an SFT record."""
    return {
        "stay_id": str(patient["stay_id"]), "label": int(patient["label"]), "c_exp": list(patient["c_exp"]),
        "prompt_text": patient.get("prompt_text", ""), "prompt_ids": list(patient["prompt_ids"]),
        "response": t["text"], "token_ids": list(t["token_ids"]), "mask": list(t["mask"]),
        "readout_index": t.get("readout_index"), "r": t["r"],
        "r_cls": t["r_cls"], "r_att": t["r_att"], "r_att_expert": t["r_att_expert"],
        "probability": t["probability"], "n_steps": t["n_steps"], "rollout": t["rollout"],
        "features_by": t.get("features_by", "policy"),
    }


def select_patient(patient: dict, cfg: MCTSConfig, correct_side_only: bool = True) -> list[dict]:
    """The top-k qualifying trajectories of one stored patient, as SFT records."""
    label = int(patient["label"])
    ranked = sorted(patient["trajectories"], key=lambda t: (-t["r"], t["rollout"]))
    out, seen = [], set()
    for t in ranked:
        if not t["well_formed"] or (correct_side_only and not correct_side(t["probability"], label)):
            continue
        if cfg.dedupe and t["text"] in seen:
            continue
        seen.add(t["text"])
        out.append(_record(patient, t))
        if len(out) == cfg.top_k_per_patient:
            break
    return out


def slot_only_records(patients: Iterable[dict], kept: list[dict]) -> list[dict]:
    """Every well-formed rollout with an answer slot of each patient in ``kept`` that ``kept`` does not hold, as a
    record SFT trains on the answer slot alone (``train_text`` False); identical texts are kept, each is a draw."""
    chosen = {(r["stay_id"], r["rollout"]) for r in kept}
    keep_ids = {r["stay_id"] for r in kept}
    out = []
    for patient in patients:
        sid = str(patient["stay_id"])
        if sid not in keep_ids:
            continue
        for t in sorted(patient["trajectories"], key=lambda t: t["rollout"]):
            if (sid, t["rollout"]) in chosen or not t["well_formed"] or t.get("readout_index") is None:
                continue
            out.append({**_record(patient, t), "train_text": False})
    return out


def balance_classes(records: list[dict]) -> list[dict]:
    """Cut the larger class to the smaller one's size (highest R kept); input order is kept otherwise."""
    pos = [i for i, r in enumerate(records) if r["label"] == 1]
    neg = [i for i, r in enumerate(records) if r["label"] == 0]
    if not pos or not neg:
        if records:
            log.warning("trajectory selection: only %s-label trajectories qualified (%d); the set is not balanced",
                        "positive" if pos else "negative", len(records))
        return list(records)
    m = min(len(pos), len(neg))
    big = pos if len(pos) > len(neg) else neg
    drop = set(sorted(big, key=lambda i: (-records[i]["r"], i))[m:])
    return [r for i, r in enumerate(records) if i not in drop]


def select_trajectories(patients: Iterable[dict], cfg: MCTSConfig, correct_side_only: bool = True,
                        slot_only: bool = False) -> list[dict]:
    """The SFT set: per-patient top-k (on the correct side of 0.5 when ``correct_side_only``), then
    (``cfg.balance``) classes balanced; with ``slot_only`` the kept patients' other rollouts follow as slot-only
    records (module docstring)."""
    patients = list(patients)
    records = [rec for p in patients for rec in select_patient(p, cfg, correct_side_only)]
    kept = balance_classes(records) if cfg.balance else records
    return kept + slot_only_records(patients, kept) if slot_only else kept


def trains_text(record: dict) -> bool:
    """Whether SFT trains the record's reasoning (a selected trajectory) or its answer slot alone."""
    return bool(record.get("train_text", True))
