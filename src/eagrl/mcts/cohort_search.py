"""The Stage-1 search over a cohort split: ``run_mcts`` searches each patient, stores, selects and reports.

``run_mcts(cohort, attention_table, model_cfg, gen_cfg, mcts_cfg, out_dir)`` writes into ``out_dir``:

* ``trajectories.jsonl``: every completed rollout of every patient (:class:`TrajectoryStore`, one line a
  patient, appended as each tree finishes; a rerun skips the stored patients);
* ``selected.jsonl``: the SFT set (:func:`select_trajectories`), one record a line (with the yes/no readout and
  ``mcts.slot_rollouts: all``, the kept patients' other rollouts follow, marked for the answer slot alone);
* ``metrics.json``: means of R, R_cls, R_att (search reward) and R_att against C_exp over the selected
  trajectories with percentile-bootstrap 95% intervals, the same means over all trajectories, selected
  counts by class, tree sizes and time per patient.

The function is what the CLI, the pipeline component and the tests call; it logs the metrics into the
active MLflow run, if the caller opened one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from eagrl.config.llm import GenerationConfig, ModelConfig
from eagrl.config.mcts import MCTSConfig
from eagrl.config.reward import DEFAULT_CLS, ClsReward
from eagrl.data.cohort import Cohort
from eagrl.errors import DataError
from eagrl.llm.backends import GenerationBackend, make_backend
from eagrl.llm.prompt import build_prompt, encode
from eagrl.mcts.search import make_generator, search
from eagrl.mcts.select import select_trajectories, trains_text
from eagrl.mcts.store import TrajectoryStore
from eagrl.metrics import bootstrap_indices
from eagrl.tracking.dvc_store import tree_md5
from eagrl.workspace import Workspace, model_config

log = logging.getLogger(__name__)

# MCTS settings that do not change what the search writes (selection and sample size): left out of the header,
# as GenerationConfig.content() leaves out the throughput-only generation settings.
_NOT_SEARCH = {"top_k_per_patient", "balance", "dedupe", "slot_rollouts", "n_boot", "split", "max_stays"}


@dataclass
class MCTSResult:
    trajectories_path: Path
    selected_path: Path
    metrics_path: Path
    metrics: dict = field(default_factory=dict)
    n_searched: int = 0  # patients searched in this call (the rest were already stored)
    n_skipped: int = 0


def run_mcts(
    cohort: Cohort,
    attention_table: pd.DataFrame,
    model_cfg: ModelConfig | None = None,
    gen_cfg: GenerationConfig | None = None,
    mcts_cfg: MCTSConfig | None = None,
    out_dir: str | Path = "mcts",
    split: str = "train",
    max_stays: int | None = None,
    backend: GenerationBackend | None = None,
    progress: bool = True,
    stay_ids: list[str] | None = None,
    deadline: float | None = None,
    cls_reward: ClsReward | None = None,
) -> MCTSResult:
    """Search every stay of ``split`` (or a label-stratified sample of ``max_stays``), resuming a previous run in
    ``out_dir``.

    ``stay_ids`` searches exactly those stays instead (e.g. one shard of a split run by parallel workers);
    ``deadline`` (a ``time.time()`` value) stops taking new stays once passed; the stored ones stay resumable.
    ``cls_reward`` is how R_cls scores the readout (the config's ``reward`` section; default: its defaults).
    """
    model_cfg, gen_cfg, cfg = model_cfg or ModelConfig(), gen_cfg or GenerationConfig(), mcts_cfg or MCTSConfig()
    cls_reward = cls_reward or DEFAULT_CLS
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if stay_ids is None:
        stay_ids = cohort.sample_ids(split, max_stays, cfg.seed)  # all, or a label-stratified sample
    stay_ids = [str(s) for s in stay_ids]
    if not stay_ids:
        raise DataError(f"run_mcts was given an empty stay_ids list for the {cohort.dataset}/{cohort.task} cohort")
    c_exp = c_exp_lookup(attention_table, stay_ids)

    store = TrajectoryStore(out / "trajectories.jsonl",
                            search_header(cohort, model_cfg, gen_cfg, cfg, split, cls_reward))
    todo = [s for s in stay_ids if s not in store]
    if len(todo) < len(stay_ids):
        log.info("mcts: %d of %d stays already stored in %s; resuming", len(stay_ids) - len(todo), len(stay_ids),
                 store.path)
    if todo:
        backend = backend or make_backend(model_cfg, gen_cfg)
        generator = make_generator(backend, gen_cfg, cfg, cohort.features)
        tok = backend.tokenizer
        with _Progress(len(todo), progress) as advance:
            for sid in todo:
                if deadline is not None and time.time() > deadline:
                    log.warning("mcts: deadline reached; %d stays left for a later call", len(set(todo) - store.done()))
                    break
                rec = cohort.patient(sid)
                prompt = build_prompt(rec, cohort.features, dataset=cohort.dataset, task=cohort.task,
                                      cfg=generator.cfg, tokenizer=tok)
                ids = encode(prompt, tok)
                res = search(generator, ids, rec.label, c_exp[sid], cfg, stay_id=sid, cls_reward=cls_reward)
                store.append({"label": res.label, "c_exp": res.c_exp, "prompt_ids": res.prompt_ids,
                              "prompt_text": prompt.text, "stats": res.stats, "stay_id": sid,
                              "trajectories": [c.to_json() for c in res.completed]})
                advance(f"{sid}: {res.stats['nodes']} nodes, {res.stats['seconds']:.1f} s")

    wanted = set(stay_ids)
    patients = [p for p in store.patients() if p["stay_id"] in wanted]
    searched = [s for s in todo if s in store]
    selected = select_trajectories(patients, cfg, correct_side_only=gen_cfg.readout == "digits",
                                   slot_only=gen_cfg.readout == "yesno" and cfg.slot_rollouts == "all")
    selected_path = _write_jsonl(out / "selected.jsonl", selected)
    metrics = mcts_metrics(patients, selected, cfg.n_boot, cfg.seed)
    from eagrl.metrics import metrics_json

    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(metrics_json(metrics), indent=1, sort_keys=True))
    _log_mlflow(metrics)
    return MCTSResult(store.path, selected_path, metrics_path, metrics, len(searched), len(stay_ids) - len(todo))


# ====================================================================== statistics
def mean_ci(values, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> tuple[float, list[float]]:
    """The mean and its percentile-bootstrap interval (NaN for no values; a point interval for one)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return float("nan"), [float("nan"), float("nan")]
    if n_boot <= 0 or v.size == 1:
        return float(v.mean()), [float(v.mean()), float(v.mean())]
    means = v[bootstrap_indices(v.size, n_boot, seed)].mean(axis=1)  # (n_boot,)
    lo, hi = np.percentile(means, [50 * (1 - ci), 50 * (1 + ci)])
    return float(v.mean()), [float(lo), float(hi)]


def mcts_metrics(patients: list[dict], selected: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """Reward statistics of the selected and of all trajectories, counts, tree sizes and timings (the slot-only
    records of ``selected`` are counted apart: ``n_slot_only``)."""
    m: dict = {"n_slot_only": sum(not trains_text(s) for s in selected)}
    selected = [s for s in selected if trains_text(s)]
    for key in ("r", "r_cls", "r_att", "r_att_expert"):
        m[f"selected_{key}_mean"], m[f"selected_{key}_ci"] = mean_ci([s[key] for s in selected], n_boot, seed)
    m["selected_expert_features_share"] = (float(np.mean([s.get("features_by") == "expert" for s in selected]))
                                           if selected else float("nan"))
    everything = [t for p in patients for t in p["trajectories"]]
    trajs = [t for t in everything if t.get("features_by", "policy") == "policy"]  # what the policy sampled
    m["n_expert_candidates"] = len(everything) - len(trajs)
    for key in ("r", "r_cls", "r_att", "r_att_expert"):
        m[f"all_{key}_mean"] = float(np.mean([t[key] for t in trajs])) if trajs else float("nan")
    stats = [p["stats"] for p in patients]
    seconds = float(sum(s["seconds"] for s in stats))
    m.update({
        "n_patients": len(patients),
        "n_trajectories": len(trajs),
        "n_selected": len(selected),
        "n_selected_positive": sum(1 for s in selected if s["label"] == 1),
        "n_selected_negative": sum(1 for s in selected if s["label"] == 0),
        "n_patients_selected": len({s["stay_id"] for s in selected}),
        "well_formed_rate": float(np.mean([t["well_formed"] for t in trajs])) if trajs else float("nan"),
        "tree_nodes_mean": float(np.mean([s["nodes"] for s in stats])) if stats else float("nan"),
        "tree_max_depth_mean": float(np.mean([s["max_depth"] for s in stats])) if stats else float("nan"),
        "response_steps_mean": float(np.mean([t["n_steps"] for t in trajs])) if trajs else float("nan"),
        "seconds_per_patient": seconds / len(stats) if stats else float("nan"),
        "trajectories_per_minute": 60.0 * len(trajs) / seconds if seconds > 0 else float("nan"),
    })
    return m


# ====================================================================== helpers
def c_exp_lookup(table: pd.DataFrame, stay_ids: list[str]) -> dict[str, list[str]]:
    if not {"stay_id", "c_exp"} <= set(table.columns):
        raise DataError(f"the expert attention table needs columns stay_id and c_exp, has {list(table.columns)[:6]}")
    lookup = {str(s): list(c) for s, c in zip(table["stay_id"], table["c_exp"])}
    missing = [s for s in stay_ids if s not in lookup]
    if missing:
        raise DataError(f"the expert attention table has no C_exp for {len(missing)} of {len(stay_ids)} stays "
                        f"(e.g. {missing[:3]}); export it from the expert trained on this cohort")
    return lookup


def search_header(cohort: Cohort, model_cfg: ModelConfig, gen_cfg: GenerationConfig, cfg: MCTSConfig, split: str,
                  cls_reward: ClsReward | None = None) -> dict:
    search = cfg.model_dump(exclude=_NOT_SEARCH)
    if search["parallel"] == 1:  # the one-at-a-time search stores came from before the setting: they still resume
        del search["parallel"]
    if not search["expert_features"]:  # so do the stores from before this setting
        del search["expert_features"]
    header = {
        "dataset": cohort.dataset, "task": cohort.task, "split": split, "model": model_cfg.weights(),
        "adapter": model_cfg.adapter,
        "mcts": search,
        "generation": gen_cfg.content(),
    }
    if cls_reward is not None and cls_reward != DEFAULT_CLS:  # stores of the default reward keep their header
        header["reward"] = cls_reward.model_dump()
    return header


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, separators=(",", ":")) + "\n")
    os.replace(tmp, path)
    return path


class _Progress:
    """A rich progress bar (or nothing when disabled); ``advance(text)`` ticks one patient."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.bar, self.task = total, enabled, None, None
        self.t0 = time.perf_counter()

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("mcts"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.description}"), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("", total=self.total)

        def advance(text: str) -> None:
            log.info("mcts: %s", text)
            if self.bar is not None:
                self.bar.update(self.task, advance=1, description=text)

        return advance

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False


def _log_mlflow(metrics: dict) -> None:
    try:
        import mlflow
    except ImportError:  # pragma: no cover
        return
    if mlflow.active_run() is None:
        return
    from eagrl.metrics import scalar_metrics

    mlflow.log_metrics({k: v for k, v in scalar_metrics(metrics).items() if np.isfinite(v)})


def trajectories_dir(cfg, cohort: Cohort, cohort_path: Path, attention_path: Path) -> Path:
    """The store folder for these settings, this cohort version and this C_exp table (see the MCTS stage's module
    docstring)."""
    header = search_header(cohort, model_config(cfg), cfg.generation, cfg.mcts, cfg.mcts.split, cfg.reward)
    key = {"search": header, "cohort": tree_md5(cohort_path),
           "c_exp": hashlib.md5(Path(attention_path).read_bytes()).hexdigest()}
    digest = hashlib.md5(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    mode = "guided" if cfg.mcts.expert_guidance else "unguided"
    return Workspace.of(cfg).trajectories_dir / f"{mode}-{digest}"
