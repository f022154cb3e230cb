"""MEDS (Medical Event Data Standard): how users bring full MIMIC-IV (or any EHR converted to MEDS).

Expected layout of ``data_path`` (a MEDS root, as written by MEDS-transforms / MIMIC-IV-MEDS):

* ``data/**/*.parquet`` (or, for a flat export, ``*.parquet`` at the root): events with ``subject_id`` (int),
  ``time`` (datetime, null for static events), ``code`` (str), ``numeric_value`` (float, nullable) and
  optionally ``unit`` and ``text_value``;
* ``labels/**/*.parquet`` or ``labels.parquet``: the task's label table, ``subject_id``, ``prediction_time``,
  ``boolean_value`` (one row per sample). Put (or symlink) the task's label folder there;
* optional ``metadata/codes.parquet`` (``code``, ``description``): the description becomes the feature's
  description and an alias, so the LLM can match "Creatinine" to ``LAB//50912//mg/dL``;
* optional ``metadata/subject_splits.parquet`` (``subject_id``, ``split`` in train/tuning/held_out): when
  present it fixes the split (tuning -> val, held_out -> test), as MEDS benchmarks expect.

Each label row is one sample, ``stay_id = f"{subject_id}@{prediction_time:%Y%m%dT%H%M}"``, whose prediction
time is fixed by the label, so the cohort uses the window [prediction_time - observation_hours,
prediction_time) (all history before it when ``observation_hours`` is None). Features are the
``meds_max_features`` codes with the most numeric events. Only events of labelled subjects are read.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from eagrl.config import DataConfig
from eagrl.data.schema import STAY_COLUMNS, TASKS, FeatureSpec, RawEHR
from eagrl.data.sources import shared_data_dir
from eagrl.errors import DataError

NAME = "meds"
# A MEDS history spans days to years: one visit per 24 h keeps a multi-day window to a prompt-sized series.
# Bins are anchored at the window start (or the first event), so with a window the last bin ends exactly at
# the prediction time.
DEFAULT_BIN_HOURS = 24.0
BIRTH_CODE = "MEDS_BIRTH"
GENDER_PREFIX = "GENDER//"
SEX_OF = {"M": 1.0, "MALE": 1.0, "F": 0.0, "FEMALE": 0.0}
SPLIT_OF = {"train": "train", "tuning": "val", "held_out": "test"}  # MEDS split names -> the cohort's

EVENT_COLUMNS = {"subject_id": "numeric", "time": "datetime", "code": "string", "numeric_value": "numeric"}
LABEL_COLUMNS = {"subject_id": "numeric", "prediction_time": "datetime", "boolean_value": "any"}
REQUIRED_COLUMNS = {"events": EVENT_COLUMNS, "labels": LABEL_COLUMNS}
OPTIONAL_EVENT_COLUMNS = ("unit",)  # text_value is not read: features are numeric


def default_path() -> Path:
    return shared_data_dir() / "meds"


# Words in a label table's path (labels/<task>/...) that name a task, as MEDS task folders do.
TASK_WORDS = {"mortality": ("mortality", "death", "died"), "readmission_30d": ("readmission", "readmit")}


def default_task(path: str | Path) -> str:
    """The task the label table is for, read from its path (``labels/mortality/...``, ``labels/readmission/30d``):
    a MEDS label table holds one task and says which only by where it lies. None or two named: DataError."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"MEDS folder not found: {root}, so its label table cannot give the task; pass --task")
    files = _label_files(root)
    named = {task for f in files for task, words in TASK_WORDS.items()
             if any(w in f.relative_to(root).as_posix().lower() for w in words)}
    if len(named) != 1:
        where = ", ".join(f.relative_to(root).as_posix() for f in files[:3])
        said = f"names {sorted(named)}" if named else "names no task"
        raise DataError(f"the MEDS label table under {root} ({where}) {said}; put it under labels/<task>/ "
                        f"({', '.join(TASKS)}) or pass --task")
    return named.pop()


# ====================================================================== reading
def read(path: str | Path) -> dict[str, pd.DataFrame]:
    """Native tables: ``events`` (of labelled subjects only), ``labels`` and, if present, ``codes`` and
    ``subject_splits``. Any unreadable file or missing column raises DataError naming the file."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"MEDS folder not found: {root} (expected data/*.parquet and labels/*.parquet)")
    labels = _read_files(_label_files(root), LABEL_COLUMNS)
    if labels.empty:
        raise DataError(f"the MEDS label table under {root} has no rows")
    subjects = pa.array(labels["subject_id"].dropna().unique())
    events = _read_files(_event_files(root), EVENT_COLUMNS, OPTIONAL_EVENT_COLUMNS, subjects=subjects)
    native = {"events": events, "labels": labels}
    meta = root / "metadata"
    if (meta / "codes.parquet").is_file():
        native["codes"] = _read_files([meta / "codes.parquet"], {"code": "string"}, ("description",))
    if (meta / "subject_splits.parquet").is_file():
        native["subject_splits"] = _read_files([meta / "subject_splits.parquet"],
                                               {"subject_id": "numeric", "split": "string"})
    return native


def _label_files(root: Path) -> list[Path]:
    files = sorted((root / "labels").rglob("*.parquet")) if (root / "labels").is_dir() else []
    if not files and (root / "labels.parquet").is_file():
        files = [root / "labels.parquet"]
    if not files:
        raise DataError(f"no MEDS label table under {root}: expected labels/*.parquet or labels.parquet with "
                        f"columns {list(LABEL_COLUMNS)} (one row per sample to predict)")
    return files


def _event_files(root: Path) -> list[Path]:
    if (root / "data").is_dir():
        files = sorted((root / "data").rglob("*.parquet"))
    else:  # a flat export: every root-level parquet except the label table
        files = sorted(f for f in root.glob("*.parquet") if f.name != "labels.parquet")
    if not files:
        raise DataError(f"no MEDS event files under {root}: expected data/**/*.parquet (or *.parquet) with "
                        f"columns {list(EVENT_COLUMNS)}")
    return files


def _read_files(files: Iterable[Path], required: dict[str, str], optional: tuple[str, ...] = (),
                subjects: pa.Array | None = None) -> pd.DataFrame:
    frames = [_read_file(f, required, optional, subjects) for f in files]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _read_file(file: Path, required: dict[str, str], optional: tuple[str, ...],
               subjects: pa.Array | None) -> pd.DataFrame:
    """One parquet file's required (+ present optional) columns, optionally only the given subjects' rows."""
    try:
        names = pq.ParquetFile(file).schema_arrow.names
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{file} is not a readable parquet file (truncated or corrupt?): {exc}") from None
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"{file} lacks the MEDS column(s) {missing} (has {names})")
    columns = [*required, *(c for c in optional if c in names)]
    try:
        table = pq.read_table(file, columns=columns)
        if subjects is not None:
            ids = table.column("subject_id")
            table = table.filter(pc.is_in(ids, value_set=subjects.cast(ids.type)))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{file} cannot be read (corrupt data, or a subject_id type that differs from the "
                        f"label table's): {exc}") from None
    return table.to_pandas()


# ====================================================================== canonical form
def to_raw(native: dict[str, pd.DataFrame], cfg: DataConfig) -> RawEHR:
    """One stay per label row; demographics from the static events; the most frequent numeric codes."""
    events = _clean_events(native["events"])
    samples = _samples(native["labels"])
    features = _feature_specs(events, cfg.meds_max_features, native.get("codes"))
    stays = _stays(samples, events, cfg.task)
    measurements = _measurements(events, samples, [f.name for f in features], cfg.observation_hours)
    return RawEHR(source=NAME, stays=stays, measurements=measurements, features=features, native=native,
                  default_bin=DEFAULT_BIN_HOURS, fixed_split=_fixed_split(native.get("subject_splits"), samples))


def _naive_ns(s: pd.Series) -> pd.Series:
    """Timezone-naive datetime64[ns], the schema's time type (MEDS writes microseconds, maybe UTC)."""
    s = pd.to_datetime(s)
    if getattr(s.dt, "tz", None) is not None:
        s = s.dt.tz_convert(None)
    return s.astype("datetime64[ns]")


def _clean_events(events: pd.DataFrame) -> pd.DataFrame:
    out = events.assign(time=_naive_ns(events["time"]),
                        numeric_value=pd.to_numeric(events["numeric_value"], errors="coerce").astype(float))
    return out[out["code"].notna()]


def _samples(labels: pd.DataFrame) -> pd.DataFrame:
    """Label rows -> samples with their stay id; a repeated (subject, prediction minute) is an error."""
    s = pd.DataFrame({"subject_id": labels["subject_id"], "prediction_time": _naive_ns(labels["prediction_time"]),
                      "label": labels["boolean_value"].astype(float)})
    if s["subject_id"].isna().any() or s["prediction_time"].isna().any():
        n = int((s["subject_id"].isna() | s["prediction_time"].isna()).sum())
        raise DataError(f"the MEDS label table has {n} rows without subject_id or prediction_time")
    s["subject_id"] = s["subject_id"].astype(np.int64)
    s["stay_id"] = s["subject_id"].astype(str) + "@" + s["prediction_time"].dt.strftime("%Y%m%dT%H%M")
    dup = s[s["stay_id"].duplicated(keep=False)]
    if len(dup):
        raise DataError(f"the MEDS label table has {len(dup)} rows sharing a subject and prediction minute, "
                        f"e.g. {dup['stay_id'].iloc[0]}; keep one label per sample")
    return s.reset_index(drop=True)


def _demographics(events: pd.DataFrame) -> pd.DataFrame:
    """Per subject: birth time (MEDS_BIRTH), sex (GENDER//M|F), first dated non-birth event."""
    code = events["code"]
    birth = events[code == BIRTH_CODE].groupby("subject_id")["time"].min()
    gender = events[code.str.startswith(GENDER_PREFIX)].groupby("subject_id")["code"].first()
    sex = gender.str.removeprefix(GENDER_PREFIX).str.upper().map(SEX_OF)
    dated = events[events["time"].notna() & (code != BIRTH_CODE)]
    first = dated.groupby("subject_id")["time"].min()
    return pd.DataFrame({"birth": birth, "sex": sex, "first_event": first})


def _stays(samples: pd.DataFrame, events: pd.DataFrame, task: str) -> pd.DataFrame:
    """Stay rows. admit_time: the subject's first dated event (births excluded), capped at the prediction
    time; MEDS has no stay boundaries. age: years from MEDS_BIRTH to the prediction time, the moment the
    model speaks about (the first event may be years earlier)."""
    demo = _demographics(events).reindex(samples["subject_id"])
    pred = samples["prediction_time"]
    first = pd.Series(demo["first_event"].to_numpy(), index=samples.index).astype("datetime64[ns]")
    birth = pd.Series(demo["birth"].to_numpy(), index=samples.index).astype("datetime64[ns]")
    stays = pd.DataFrame({
        "stay_id": samples["stay_id"],
        "patient_id": samples["subject_id"].astype(str),
        "sex": demo["sex"].to_numpy(dtype=float),
        "age": (pred - birth) / pd.Timedelta(days=365.25),
        "admit_time": first.where(first < pred, pred),
        "discharge_time": pd.Series(pd.NaT, index=samples.index, dtype="datetime64[ns]"),
        "prediction_time": pred,
    })
    for t in TASKS:  # the label table is task-specific: it fills only the configured task
        stays[f"label_{t}"] = samples["label"] if t == task else np.nan
    return stays[STAY_COLUMNS]


def _numeric_events(events: pd.DataFrame) -> pd.DataFrame:
    return events[events["time"].notna() & events["numeric_value"].notna() & (events["code"] != BIRTH_CODE)]


def _feature_specs(events: pd.DataFrame, k: int, codes: pd.DataFrame | None) -> list[FeatureSpec]:
    """The k codes with the most dated numeric events (ties by code, so the choice is reproducible)."""
    numeric = _numeric_events(events)
    counts = numeric["code"].value_counts()
    counts = counts[counts > 0]  # a categorical code column also counts its unused categories
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    if not ranked:
        raise DataError("the MEDS events of the labelled subjects have no dated numeric values to use as features")
    units = _units(numeric)
    descriptions = {} if codes is None else (
        codes.dropna(subset=["code"]).drop_duplicates("code").set_index("code")
        .get("description", pd.Series(dtype=object)).dropna().astype(str).to_dict())
    return [_spec(code, units.get(code, ""), descriptions.get(code, "")) for code, _ in ranked]


def _units(numeric: pd.DataFrame) -> dict[str, str]:
    """Most frequent unit per code, when the events carry a unit column."""
    if "unit" not in numeric.columns:
        return {}
    u = numeric.dropna(subset=["unit"])
    if u.empty:
        return {}
    return (u.groupby(["code", "unit"], observed=True).size().sort_values(ascending=False)
            .reset_index().drop_duplicates("code").set_index("code")["unit"].astype(str).to_dict())


def _spec(code: str, unit: str, description: str) -> FeatureSpec:
    """MEDS gives no reference range; the name is the code itself, aliases are what a reader would say."""
    aliases = [a for a in (description, _code_word(code, unit)) if a and a != code]
    return FeatureSpec(name=code, unit=unit, aliases=tuple(dict.fromkeys(aliases)),
                       description=description or f"MEDS code {code}")


def _code_word(code: str, unit: str) -> str:
    """The last readable part of a ``VOCAB//...//...`` code: not the vocabulary, an item number or the unit."""
    parts = [p for p in code.split("//")[1:] if p]
    for part in reversed(parts):
        if part.lower() != unit.lower() and not part.replace(".", "").isdigit():
            return part
    return ""


def _measurements(events: pd.DataFrame, samples: pd.DataFrame, features: list[str],
                  observation_hours: float | None) -> pd.DataFrame:
    """Each sample's feature events strictly before its prediction time (and inside the window, if any).

    A subject with several label rows has its events repeated under each sample, so the window is applied
    here already, not only in the cohort, to keep that copy small.
    """
    numeric = _numeric_events(events)
    numeric = numeric[numeric["code"].isin(features)][["subject_id", "time", "code", "numeric_value"]]
    joined = numeric.merge(samples[["subject_id", "stay_id", "prediction_time"]], on="subject_id", how="inner")
    keep = joined["time"] < joined["prediction_time"]
    if observation_hours:
        keep &= joined["time"] >= joined["prediction_time"] - pd.Timedelta(hours=observation_hours)
    joined = joined[keep]
    return pd.DataFrame({
        "stay_id": joined["stay_id"].to_numpy(dtype=object),
        "time": joined["time"].to_numpy(dtype="datetime64[ns]"),
        "feature": pd.Categorical(joined["code"].astype(object), categories=features),
        "value": joined["numeric_value"].to_numpy(dtype=float),
    })


def _fixed_split(subject_splits: pd.DataFrame | None, samples: pd.DataFrame) -> pd.Series | None:
    """MEDS' own subject split, if the dataset ships one; else None (the cohort draws a stratified split)."""
    if subject_splits is None:
        return None
    unknown = sorted(set(subject_splits["split"].dropna()) - set(SPLIT_OF))
    if unknown:
        raise DataError(f"metadata/subject_splits.parquet has unknown split name(s) {unknown}; "
                        f"MEDS uses {list(SPLIT_OF)}")
    of_subject = subject_splits.drop_duplicates("subject_id").set_index("subject_id")["split"].map(SPLIT_OF)
    split = samples["subject_id"].map(of_subject)
    return pd.Series(split.to_numpy(dtype=object), index=samples["stay_id"].to_numpy(), name="split").dropna()
