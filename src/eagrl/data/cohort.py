"""The canonical cohort: windowed per-stay visit series, labels, patient-level splits, train-only statistics.

``build_cohort(raw, cfg)`` is the one place where any source becomes model input, so every later stage
(expert, prompts, MCTS, RL, evaluation) reads the same thing:

* ``stays``: one row per stay with ``label`` (the configured task), demographics, ``prediction_time``,
  ``split`` in {train, val, test} and ``n_visits``;
* ``visits``: one row per (stay, visit) with the raw feature values (NaN = not measured), used for prompts;
* ``visits_model``: the same rows z-scored with train statistics, forward-filled within the stay and
  imputed with the train median, used by the expert;
* ``features``: the :class:`FeatureSpec` list, in column order; ``meta``: counts, statistics, provenance.

Leakage rule: every measurement used is strictly before the stay's ``prediction_time``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from eagrl.config import DataConfig
from eagrl.data.schema import FeatureSpec, RawEHR
from eagrl.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass
class PatientRecord:
    """One stay as the prompt serializer sees it: raw values, in visit order."""

    stay_id: str
    sex: float
    age: float
    visit_times: list[pd.Timestamp]
    values: dict[str, list[float]]  # feature name -> one value per visit (NaN = not measured)
    label: int
    prediction_time: pd.Timestamp


@dataclass
class Cohort:
    dataset: str
    task: str
    stays: pd.DataFrame
    visits: pd.DataFrame
    visits_model: pd.DataFrame
    features: list[FeatureSpec]
    meta: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ access
    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def split_ids(self, split: str) -> list[str]:
        return self.stays.loc[self.stays["split"] == split, "stay_id"].tolist()

    def sample_ids(self, split: str, max_stays: int | None, seed: int = 0) -> list[str]:
        """The stays of ``split`` (as str, in cohort order): all, or a seeded label-stratified sample of ``max_stays``.

        Every stage that works on part of a split (the MCTS, RL, held-out checks, evaluation) takes it from here.
        Not the first ``max_stays``: a cohort's order can follow the outcome (the first 8 stays of the TJH
        mortality train split are all survivors, so a search of those found no positive trajectory). Each class
        gets its proportional share (largest remainders), and at least one stay. Samples are nested: with the
        same seed, a larger ``max_stays`` keeps every stay of a smaller one (a resumed search only adds stays).
        An empty split is a :class:`DataError` naming the cohort and the split.
        """
        ids = [str(s) for s in self.split_ids(split)]
        if not ids:
            raise DataError(f"the {self.dataset}/{self.task} cohort has no stays in split {split!r}")
        if not max_stays or max_stays >= len(ids):
            return ids
        labels = self.stays.assign(stay_id=self.stays["stay_id"].astype(str)).set_index("stay_id").loc[ids, "label"]
        classes = labels.value_counts().sort_index()  # label -> count
        share = max_stays * classes.to_numpy() / len(ids)
        k = np.maximum(np.floor(share).astype(int), 1)
        for j in np.argsort(-(share - np.floor(share)), kind="stable")[: max(0, max_stays - int(k.sum()))]:
            k[j] += 1
        rng = np.random.default_rng(seed)
        chosen: set[str] = set()
        for (label, count), kk in zip(classes.items(), k):  # the head of one seeded order per class
            order = rng.permutation(labels.index[labels == label].to_numpy())
            chosen |= set(order[:min(int(kk), count)].tolist())
        return [s for s in ids if s in chosen]

    def tensors(self, split: str | None = None, normalized: bool = True) -> dict[str, np.ndarray]:
        """Padded arrays for the expert: x (B, T, F), mask (B, T), demo (B, 2), y (B,), lengths (B,).

        Visits are left-aligned (visit 0 at t = 0) and padded with zeros after ``lengths[b]``.
        ``demo`` is [sex, z-scored age] with unknown sex as 0.5 and unknown age as 0.
        """
        stays = self.stays if split is None else self.stays[self.stays["split"] == split]
        table = self.visits_model if normalized else self.visits
        order = {sid: i for i, sid in enumerate(stays["stay_id"])}
        v = table[table["stay_id"].isin(order)]
        b_idx = v["stay_id"].map(order).to_numpy()
        t_idx = v["visit"].to_numpy()
        n_b = len(stays)
        lengths = np.bincount(b_idx, minlength=n_b) if n_b else np.zeros(0, dtype=int)
        n_t = int(lengths.max()) if n_b else 0
        x = np.zeros((n_b, n_t, len(self.features)), dtype=np.float32)  # (B, T, F)
        x[b_idx, t_idx] = v[self.feature_names].to_numpy(dtype=np.float32)
        mask = np.zeros((n_b, n_t), dtype=bool)
        mask[b_idx, t_idx] = True
        age_mean, age_std = self.meta["demographics"]["age_mean"], self.meta["demographics"]["age_std"]
        sex = stays["sex"].fillna(0.5).to_numpy(dtype=np.float32)
        age = ((stays["age"] - age_mean) / age_std).fillna(0.0).to_numpy(dtype=np.float32)
        return {
            "x": x,
            "mask": mask,
            "demo": np.stack([sex, age], axis=1) if n_b else np.zeros((0, 2), np.float32),
            "y": stays["label"].to_numpy(dtype=np.float32),
            "lengths": lengths.astype(np.int64),
            "stay_ids": stays["stay_id"].to_numpy(dtype=object),
        }

    def patient(self, stay_id: str) -> PatientRecord:
        row = self.stays.loc[self.stays["stay_id"] == stay_id]
        if row.empty:
            raise DataError(f"stay {stay_id!r} is not in the {self.dataset}/{self.task} cohort")
        row = row.iloc[0]
        v = self.visits[self.visits["stay_id"] == stay_id].sort_values("visit")
        return PatientRecord(
            stay_id=str(stay_id),
            sex=float(row["sex"]),
            age=float(row["age"]),
            visit_times=list(v["time"]),
            values={f: v[f].astype(float).tolist() for f in self.feature_names},
            label=int(row["label"]),
            prediction_time=row["prediction_time"],
        )

    # ------------------------------------------------------------------ storage
    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.stays.to_parquet(out / "stays.parquet", index=False)
        self.visits.to_parquet(out / "visits.parquet", index=False)
        self.visits_model.to_parquet(out / "visits_model.parquet", index=False)
        (out / "features.json").write_text(json.dumps([f.to_dict() for f in self.features], indent=1))
        meta = {"dataset": self.dataset, "task": self.task, **self.meta}
        (out / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
        return out

    @classmethod
    def load(cls, path: str | Path) -> "Cohort":
        p = Path(path)
        missing = [n for n in ("stays.parquet", "visits.parquet", "visits_model.parquet", "features.json", "meta.json")
                   if not (p / n).is_file()]
        if missing:
            raise DataError(f"{p} is not a prepared cohort: missing {', '.join(missing)} (run `eagrl data prepare`)")
        meta = json.loads((p / "meta.json").read_text())
        return cls(
            dataset=meta.pop("dataset"),
            task=meta.pop("task"),
            stays=pd.read_parquet(p / "stays.parquet"),
            visits=pd.read_parquet(p / "visits.parquet"),
            visits_model=pd.read_parquet(p / "visits_model.parquet"),
            features=[FeatureSpec.from_dict(d) for d in json.loads((p / "features.json").read_text())],
            meta=meta,
        )

    def statistics(self) -> dict[str, float]:
        """Flat numbers for MLflow and summary.json."""
        s = self.stays
        stats: dict[str, float] = {
            "n_stays": len(s),
            "n_patients": int(s["patient_id"].nunique()),
            "n_visits": len(self.visits),
            "n_features": len(self.features),
            "n_positive": int(s["label"].sum()),
            "positive_rate": float(s["label"].mean()) if len(s) else 0.0,
            "visits_per_stay_median": float(s["n_visits"].median()) if len(s) else 0.0,
            "missing_rate": float(self.visits[self.feature_names].isna().to_numpy().mean())
            if len(self.visits)
            else 0.0,
        }
        for split in SPLITS:
            part = s[s["split"] == split]
            stats[f"{split}_stays"] = len(part)
            stats[f"{split}_positive"] = int(part["label"].sum())
        return stats


# ====================================================================== building
def build_cohort(raw: RawEHR, cfg: DataConfig) -> Cohort:
    """Window, bin, filter, split, normalise and impute one source into a :class:`Cohort`."""
    label_col = f"label_{cfg.task}"
    stays = raw.stays.copy()
    if stays[label_col].notna().sum() == 0:
        raise DataError(f"{raw.source} has no {cfg.task} labels; choose another --task")
    stays = stays[stays[label_col].notna()].copy()
    stays["label"] = stays[label_col].astype(int)

    obs_hours = cfg.observation_hours if cfg.observation_hours is not None else raw.default_observation_hours
    stays = _with_windows(stays, cfg.task, obs_hours or None)
    meas = raw.measurements.merge(stays[["stay_id", "_start", "_end"]], on="stay_id", how="inner")
    keep = meas["_start"].isna() | (meas["time"] >= meas["_start"])
    keep &= meas["_end"].isna() | (meas["time"] < meas["_end"])
    meas = meas[keep & meas["value"].notna()]
    meas = meas[meas["feature"].isin(raw.feature_names())]

    bin_ = cfg.bin if cfg.bin is not None else raw.default_bin
    anchor = meas["_start"].fillna(meas["stay_id"].map(stays.set_index("stay_id")["admit_time"]))
    meas = meas.assign(vtime=_bin_times(meas["time"], anchor, bin_))
    visits = (
        meas.groupby(["stay_id", "vtime", "feature"], sort=True, observed=True)["value"].mean()
        .unstack("feature")
        .reindex(columns=raw.feature_names())
    )
    if raw.encounters is not None:  # visits that exist without any feature value
        enc = raw.encounters.merge(stays[["stay_id", "_start", "_end", "admit_time"]], on="stay_id", how="inner")
        enc = enc[
            (enc["_start"].isna() | (enc["time"] >= enc["_start"])) & (enc["_end"].isna() | (enc["time"] < enc["_end"]))
        ]
        enc_keys = pd.MultiIndex.from_arrays(
            [enc["stay_id"], _bin_times(enc["time"], enc["_start"].fillna(enc["admit_time"]), bin_)],
            names=visits.index.names,
        )
        visits = visits.reindex(visits.index.union(enc_keys.unique()))
    visits = visits.reset_index().rename(columns={"vtime": "time"})
    visits.columns.name = None
    visits = visits.sort_values(["stay_id", "time"], kind="stable")
    if cfg.max_visits:
        visits = visits.groupby("stay_id", sort=False).tail(cfg.max_visits)
    visits["visit"] = visits.groupby("stay_id", sort=False).cumcount()
    n_visits = visits.groupby("stay_id").size()
    stays["n_visits"] = stays["stay_id"].map(n_visits).fillna(0).astype(int)
    stays = stays[stays["n_visits"] >= cfg.min_visits].copy()

    # Prediction time: the window end where there is one, else the end of the last visit bin.
    last = visits.groupby("stay_id")["time"].max()
    bin_delta = pd.Timedelta(days=1) if bin_ == "day" else pd.Timedelta(hours=float(bin_))
    stays["prediction_time"] = stays["_end"].fillna(stays["stay_id"].map(last) + bin_delta)
    if not (stays["prediction_time"] > stays["stay_id"].map(last)).all():
        raise DataError("internal: a visit at or after the prediction time would leak into the cohort")

    if cfg.max_stays and len(stays) > cfg.max_stays:
        stays = _stratified_subsample(stays, cfg.max_stays, cfg.seed)
    stays["split"] = _assign_splits(stays, raw.fixed_split, cfg)
    stays = stays.sort_values("stay_id", kind="stable").reset_index(drop=True)
    visits = visits[visits["stay_id"].isin(stays["stay_id"])].reset_index(drop=True)
    visits = visits[["stay_id", "visit", "time", *raw.feature_names()]]

    stats = _train_statistics(visits, stays, raw.feature_names(), cfg.norm_percentiles)
    visits_model = _normalise_impute(visits, raw.feature_names(), stats)
    train_age = stays.loc[stays["split"] == "train", "age"].dropna()
    demo = {"age_mean": float(train_age.mean()), "age_std": float(train_age.std() or 1.0)}

    keep_cols = ["stay_id", "patient_id", "sex", "age", "admit_time", "discharge_time", "prediction_time",
                 "label", *(c for c in stays.columns if c.startswith("label_")), "split", "n_visits"]
    cohort = Cohort(
        dataset=raw.source,
        task=cfg.task,
        stays=stays[keep_cols],
        visits=visits,
        visits_model=visits_model,
        features=list(raw.features),
        meta={"normalization": stats, "demographics": demo, "bin": bin_,
              "observation_hours": obs_hours, "seed": cfg.seed, "split_fractions": list(cfg.split)},
    )
    cohort.meta["statistics"] = cohort.statistics()
    return cohort


def _with_windows(stays: pd.DataFrame, task: str, obs_hours: float | None) -> pd.DataFrame:
    """Add each stay's observation window [_start, _end) (NaT = open) and drop stays without one."""
    obs = pd.Timedelta(hours=obs_hours) if obs_hours else None
    nat = pd.Series(pd.NaT, index=stays.index, dtype="datetime64[ns]")
    if stays["prediction_time"].notna().any():  # fixed by the source (MEDS label table, PhysioNet 48 h)
        end = stays["prediction_time"]
    elif task == "mortality" and obs is not None:  # early mortality: the first hours of the stay
        end = stays["admit_time"] + obs
        # A stay already over when the window closes has no prediction point.
        end = end.where(stays["discharge_time"].isna() | (stays["discharge_time"] > end))
    elif task == "readmission_30d":  # predict at discharge from the end of the stay
        end = stays["discharge_time"]
    else:  # the whole stay, predicting after the last visit (TJH, as published)
        end = nat
    start = end - obs if obs is not None else nat
    out = stays.assign(_start=start, _end=end)
    if end.notna().any():
        out = out[out["_end"].notna()]
    return out.copy()


def _bin_times(time: pd.Series, anchor: pd.Series, bin_: str | float) -> pd.Series:
    if bin_ == "day":
        return time.dt.normalize()
    width = pd.Timedelta(hours=float(bin_))
    k = np.floor((time - anchor) / width)
    return anchor + k * width


def _stratified_subsample(stays: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    patients = stays.groupby("patient_id")["label"].max()
    frac = n / len(stays)
    keep, _ = train_test_split(patients.index.to_numpy(), train_size=frac, random_state=seed,
                               stratify=patients.to_numpy() if patients.value_counts().min() >= 2 else None)
    return stays[stays["patient_id"].isin(set(keep))].copy()


def _assign_splits(stays: pd.DataFrame, fixed: pd.Series | None, cfg: DataConfig) -> pd.Series:
    """Patient-level, label-stratified train/val/test (a patient's stays never cross splits)."""
    train_f, val_f, test_f = cfg.split
    split = pd.Series("train", index=stays.index, dtype=object)
    if fixed is not None:
        split = stays["stay_id"].map(fixed).fillna("train").astype(object)
        pool = stays[split == "train"]
        val_share = val_f / (train_f + val_f) if (train_f + val_f) > 0 else 0.0
        if not (split == "val").any() and val_share > 0:
            _, val_p = _split_patients(pool, val_share, cfg.seed)
            split[stays["patient_id"].isin(val_p).to_numpy() & (split == "train").to_numpy()] = "val"
        return split
    rest_p, test_p = _split_patients(stays, test_f, cfg.seed)
    split[stays["patient_id"].isin(test_p).to_numpy()] = "test"
    rest = stays[~stays["patient_id"].isin(test_p)]
    val_share = val_f / (train_f + val_f) if (train_f + val_f) > 0 else 0.0
    if val_share > 0:
        _, val_p = _split_patients(rest, val_share, cfg.seed)
        split[stays["patient_id"].isin(val_p).to_numpy()] = "val"
    return split


def _split_patients(stays: pd.DataFrame, share: float, seed: int) -> tuple[set, set]:
    patients = stays.groupby("patient_id")["label"].max().sort_index()
    if share <= 0 or len(patients) < 2:
        return set(patients.index), set()
    strat = patients.to_numpy() if patients.value_counts().min() >= 2 else None
    a, b = train_test_split(patients.index.to_numpy(), test_size=share, random_state=seed, stratify=strat)
    return set(a), set(b)


def _train_statistics(visits: pd.DataFrame, stays: pd.DataFrame, features: list[str],
                      percentiles: tuple[float, float]) -> dict[str, dict[str, float]]:
    """Per feature: mean/std of train values inside [p_low, p_high], and the train median."""
    train = visits[visits["stay_id"].isin(stays.loc[stays["split"] == "train", "stay_id"])]
    stats = {}
    for f in features:
        vals = train[f].dropna().to_numpy(dtype=float)
        if len(vals) == 0:
            stats[f] = {"mean": 0.0, "std": 1.0, "median": 0.0, "n_train": 0}
            continue
        lo, hi = np.percentile(vals, percentiles)
        core = vals[(vals >= lo) & (vals <= hi)]
        std = float(core.std()) if len(core) > 1 else 0.0
        stats[f] = {"mean": float(core.mean()), "std": std if std > 1e-8 else 1.0,
                    "median": float(np.median(vals)), "n_train": int(len(vals))}
    return stats


def _normalise_impute(visits: pd.DataFrame, features: list[str], stats: dict) -> pd.DataFrame:
    mean = pd.Series({f: stats[f]["mean"] for f in features})
    std = pd.Series({f: stats[f]["std"] for f in features})
    median_z = (pd.Series({f: stats[f]["median"] for f in features}) - mean) / std
    z = (visits[features] - mean) / std
    z = z.groupby(visits["stay_id"].to_numpy(), sort=False).ffill()  # forward-fill within a stay only
    z = z.fillna(median_z).astype(np.float32)
    return pd.concat([visits[["stay_id", "visit", "time"]].reset_index(drop=True), z.reset_index(drop=True)], axis=1)
