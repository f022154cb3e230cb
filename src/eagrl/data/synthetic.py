"""The planted-cause synthetic cohort: a seeded EHR whose outcome is caused by a known set of labs.

Use it where the truth must be known: does the expert's C_exp name the causes, does a policy learn to name
them. Everything comes from one recipe, :class:`SyntheticConfig`, read from YAML (the packaged default is
``eagrl/data/specs/synthetic.yaml``: 400 stays, 20 labs with names, units and reference ranges, 3-6 daily
visits, the outcome driven by exactly two labs, ``Lactate`` and ``Albumin``).

    from eagrl.data import synthetic
    ehr = synthetic.generate()                 # or generate(synthetic.load_recipe(path)), or a changed copy:
    ehr = synthetic.generate(synthetic.default_recipe().model_copy(update={"seed": 7}))
    ehr.planted                                # ["Lactate", "Albumin"]: the true causes
    synthetic.PLANTED                          # the same, for the default recipe
    raw = ehr.to_raw()                         # the canonical RawEHR that build_cohort takes
    synthetic.export_meds(ehr, "out/meds")     # a MEDS root that `--dataset meds` loads
    synthetic.planted_causes(recipe, meds=True)   # the causes as that export's codes

Through the pipeline: ``eagrl data prepare --dataset synthetic --task mortality`` (the recipe file is the
raw import that DVC versions; ``--data-path`` takes another recipe file, or a folder holding
``synthetic.yaml``), then ``eagrl expert train --dataset synthetic --task mortality``.

The generative model: stay ``i`` has a level ``z[i, j] ~ N(0, 1)`` for every lab ``j``; its visit values are
``centre_j + half_range_j * (scale_j * z[i, j] + visit_noise * e)`` (``scale_j``: ``scales[j]``, else
``level_scale``) clipped to the lab's plausible range and left unmeasured with probability ``missing`` (never at
the first visit). The risk is ``sum_j planted[j] * z[i, j] + label_noise * N(0, 1)``; the ``prevalence`` share of
stays with the highest risk are positive (``label_mortality``). Nothing else depends on the outcome. With
``risk_shape: deviation`` a planted lab's distance from its centre, ``|z[i, j]|``, takes the place of its level (a
U-shaped risk: out of range either way harms); the draws are the same, so only the labels differ.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import Field, ValidationError, model_validator

from eagrl.config.section import Section
from eagrl.data.schema import STAY_COLUMNS, FeatureSpec, RawEHR, specs_dir
from eagrl.errors import DataError

NAME = "synthetic"
RECIPE_FILE = "synthetic.yaml"  # the recipe's name inside a folder (and the packaged default)
MEDS_PREFIX = "LAB//"  # MEDS export: a lab's code is LAB//<name>//<unit>
MEDS_VISIT_HOUR = 8  # MEDS export: each day's labs are drawn at 08:00


class LabSpec(Section):
    """One lab of the catalogue: FeatureSpec's fields, with the reference range required (it sets the scale)."""

    name: str
    unit: str
    ref_low: float
    ref_high: float
    plausible_low: float
    plausible_high: float
    aliases: list[str] = Field(default_factory=list)
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> "LabSpec":
        if not self.plausible_low <= self.ref_low < self.ref_high <= self.plausible_high:
            raise ValueError(f"lab {self.name!r}: need plausible_low <= ref_low < ref_high <= plausible_high, got "
                             f"{self.plausible_low}, {self.ref_low}, {self.ref_high}, {self.plausible_high}")
        return self

    def feature(self) -> FeatureSpec:
        return FeatureSpec(name=self.name, unit=self.unit, ref_low=self.ref_low, ref_high=self.ref_high,
                           plausible_low=self.plausible_low, plausible_high=self.plausible_high,
                           aliases=tuple(self.aliases), description=self.description)


class SyntheticConfig(Section):
    """The recipe of a planted-cause cohort (all of the generator's numbers; see the module docstring)."""

    seed: int = Field(0, description="Seeds every draw: the same recipe gives the same cohort.")
    n_stays: int = Field(400, ge=10, description="Stays (one per patient).")
    visits: tuple[int, int] = Field((3, 6), description="Visits per stay, one per day, uniform in [min, max].")
    level_scale: float = Field(1.0, gt=0, description="Spread of a stay's lab level, in half reference ranges.")
    scales: dict[str, float] = Field(
        default_factory=dict, description="Lab name -> its own spread, in place of level_scale (e.g. wider for the "
        "planted causes, so that they leave their reference range where the others seldom do).")
    visit_noise: float = Field(0.3, ge=0, description="Visit-to-visit noise, in half reference ranges.")
    missing: float = Field(0.15, ge=0, lt=1, description="Share of lab values left unmeasured after the first visit.")
    prevalence: float = Field(0.3, gt=0, lt=1, description="Share of positive stays.")
    label_noise: float = Field(0.3, ge=0, description="Noise added to the planted risk before thresholding.")
    age: tuple[float, float] = Field((30.0, 90.0), description="Uniform age range in years.")
    start: str = Field("2022-01-01", description="Admissions fall in the 365 days from this date.")
    planted: dict[str, float] = Field(description="Lab name -> weight of its level in the risk: the true causes.")
    risk_shape: Literal["level", "deviation"] = Field(
        "level", description="How a planted lab enters the risk: 'level', weight * z (one direction harms: Lactate "
        "high, Albumin low); 'deviation', weight * |z| (leaving the centre either way harms, as for sodium). The "
        "same draws either way: only the labels differ.")
    labs: list[LabSpec] = Field(description="The lab catalogue: every draw follows its order.")
    order: list[str] | None = Field(
        None, description="The order the cohort lists the labs in (the feature order prompts and the expert follow); "
        "None: the catalogue's. Draws follow the catalogue, so a new order changes no value.")

    @model_validator(mode="after")
    def _check(self) -> "SyntheticConfig":
        names = [lab.name for lab in self.labs]
        if len(set(names)) != len(names):
            raise ValueError(f"synthetic labs must have unique names, got {names}")
        for key in ("planted", "scales"):
            unknown = [p for p in getattr(self, key) if p not in names]
            if unknown:
                raise ValueError(f"synthetic {key} names lab(s) {unknown} that the lab catalogue lacks: {names}")
        bad = {k: v for k, v in self.scales.items() if not v > 0}
        if bad:
            raise ValueError(f"synthetic scales must be > 0, got {bad}")
        if not self.planted or not any(self.planted.values()):
            raise ValueError("synthetic planted must name at least one lab with a non-zero weight")
        lo, hi = self.visits
        if not 1 <= lo <= hi:
            raise ValueError(f"synthetic visits must be [min, max] with 1 <= min <= max, got {self.visits}")
        if not 0 <= self.age[0] <= self.age[1] <= 120:
            raise ValueError(f"synthetic age must be [min, max] years within 0-120, got {self.age}")
        if self.order is not None and sorted(self.order) != sorted(names):
            raise ValueError(f"synthetic order must list every lab of the catalogue once: got {self.order}, "
                             f"the catalogue has {names}")
        pd.Timestamp(self.start)  # a bad date raises here, inside validation
        return self

    def listed(self) -> list[LabSpec]:
        """The labs in the order the cohort lists them."""
        by_name = {lab.name: lab for lab in self.labs}
        return [by_name[name] for name in self.order] if self.order else list(self.labs)


@dataclass
class SyntheticEHR:
    """A generated cohort: canonical stays and measurements, the feature specs, and the planted causes."""

    config: SyntheticConfig
    stays: pd.DataFrame  # STAY_COLUMNS, label_mortality in {0, 1}
    measurements: pd.DataFrame  # stay_id, time, feature, value
    features: list[FeatureSpec]
    planted: list[str]
    levels: pd.DataFrame = field(repr=False, default=None)  # stay_id x lab: the latent z (for diagnostics)

    def to_raw(self) -> RawEHR:
        return RawEHR(source=NAME, stays=self.stays.copy(), measurements=self.measurements.copy(),
                      features=list(self.features), default_bin="day")


# ====================================================================== recipes
def load_recipe(path: str | Path) -> SyntheticConfig:
    """A recipe from a YAML file, or from ``synthetic.yaml`` in a folder; a bad one is a DataError naming it."""
    p = Path(path)
    if p.is_dir():
        p = p / RECIPE_FILE
    if not p.is_file():
        raise DataError(f"no synthetic recipe at {p} (a YAML file like {default_recipe_path()})")
    try:
        tree = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"synthetic recipe {p} is not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise DataError(f"synthetic recipe {p} must be a YAML mapping, got {type(tree).__name__}")
    try:
        return SyntheticConfig.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'recipe'}: {e['msg']}" for e in exc.errors())
        raise DataError(f"synthetic recipe {p} is invalid: {problems}") from None


def default_recipe_path() -> Path:
    return specs_dir() / RECIPE_FILE


def default_recipe() -> SyntheticConfig:
    return load_recipe(default_recipe_path())


def save_recipe(cfg: SyntheticConfig, path: str | Path) -> Path:
    """Write a recipe as YAML (a folder gets ``synthetic.yaml``); an existing file is never overwritten."""
    p = Path(path)
    p = p / RECIPE_FILE if p.is_dir() else p
    if p.exists():
        raise DataError(f"{p} already exists; choose a new path for the recipe")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    return p


def planted_causes(cfg: SyntheticConfig | None = None, meds: bool = False) -> list[str]:
    """The true causes of the outcome, as feature names (or as the MEDS export's codes with ``meds``)."""
    cfg = cfg or default_recipe()
    names = [name for name, w in cfg.planted.items() if w != 0]
    if not meds:
        return names
    by_name = {lab.name: lab for lab in cfg.labs}
    return [meds_code(by_name[n]) for n in names]


def meds_code(lab: LabSpec | FeatureSpec) -> str:
    return f"{MEDS_PREFIX}{lab.name}//{lab.unit}"


# ====================================================================== generation
def generate(cfg: SyntheticConfig | None = None) -> SyntheticEHR:
    """The cohort of a recipe (the packaged default when None)."""
    cfg = cfg or default_recipe()
    rng = np.random.default_rng(cfg.seed)
    n, labs = cfg.n_stays, cfg.labs
    names = [lab.name for lab in labs]
    ids = np.array([f"syn{i:05d}" for i in range(n)], dtype=object)

    z = rng.normal(size=(n, len(labs)))  # (n, F) each stay's level of each lab
    weights = np.array([cfg.planted.get(name, 0.0) for name in names])  # (F,)
    risk = (np.abs(z) if cfg.risk_shape == "deviation" else z) @ weights + cfg.label_noise * rng.normal(size=n)
    n_pos = max(1, int(round(cfg.prevalence * n)))
    label = np.zeros(n)
    label[np.argsort(-risk, kind="stable")[:n_pos]] = 1.0

    admit = pd.Timestamp(cfg.start) + pd.to_timedelta(rng.integers(0, 365, n), unit="D")
    n_vis = rng.integers(cfg.visits[0], cfg.visits[1] + 1, n)
    stays = pd.DataFrame({
        "stay_id": ids,
        "patient_id": ids,
        "sex": rng.integers(0, 2, n).astype(float),
        "age": np.round(rng.uniform(cfg.age[0], cfg.age[1], n), 1),
        "admit_time": admit.astype("datetime64[ns]"),
        "discharge_time": (admit + pd.to_timedelta(n_vis, unit="D")).astype("datetime64[ns]"),
        "prediction_time": pd.Series(pd.NaT, index=range(n), dtype="datetime64[ns]"),
        "label_mortality": label,
        "label_readmission_30d": np.nan,
    })[STAY_COLUMNS]

    stay_idx = np.repeat(np.arange(n), n_vis)  # (V,) one row per visit
    day = np.concatenate([np.arange(k) for k in n_vis])  # (V,)
    centre = np.array([(lab.ref_low + lab.ref_high) / 2 for lab in labs])  # (F,)
    half = np.array([(lab.ref_high - lab.ref_low) / 2 for lab in labs])  # (F,)
    noise = rng.normal(size=(len(stay_idx), len(labs)))  # (V, F)
    scale = np.array([cfg.scales.get(name, cfg.level_scale) for name in names])  # (F,)
    values = centre + half * (scale * z[stay_idx] + cfg.visit_noise * noise)
    values = np.clip(values, [lab.plausible_low for lab in labs], [lab.plausible_high for lab in labs])
    unmeasured = (rng.random(values.shape) < cfg.missing) & (day[:, None] > 0)
    values[unmeasured] = np.nan

    listed = [lab.name for lab in cfg.listed()]
    wide = pd.DataFrame(values, columns=names)[listed]
    wide.insert(0, "time", (admit[stay_idx] + pd.to_timedelta(day, unit="D")).astype("datetime64[ns]"))
    wide.insert(0, "stay_id", ids[stay_idx])
    long = wide.melt(id_vars=["stay_id", "time"], var_name="feature", value_name="value").dropna(subset=["value"])
    long = long.sort_values(["stay_id", "time"], kind="stable").reset_index(drop=True)
    return SyntheticEHR(config=cfg, stays=stays, measurements=long[["stay_id", "time", "feature", "value"]],
                        features=[lab.feature() for lab in cfg.listed()], planted=planted_causes(cfg),
                        levels=pd.DataFrame(z, index=ids, columns=names)[listed])


# ====================================================================== MEDS export
def export_meds(ehr: SyntheticEHR, root: str | Path) -> Path:
    """Write ``ehr`` as a MEDS root that ``eagrl data prepare --dataset meds --data-path ROOT`` loads.

    ``data/0.parquet`` (MEDS_BIRTH, GENDER//M|F and one LAB//<name>//<unit> event per value, at 08:00 of its
    day), ``labels/mortality.parquet`` (one row per stay, predicted at midnight after its last visit day) and
    ``metadata/codes.parquet`` (each code's lab name, which the MEDS loader makes an alias). Subject ids are
    the stays' positions. An existing, non-empty ``root`` is never overwritten.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise DataError(f"{root} already holds files; export the MEDS copy to a new folder")
    stays = ehr.stays.reset_index(drop=True)
    subject = pd.Series(np.arange(len(stays), dtype=np.int64), index=stays["stay_id"])
    birth = stays["admit_time"] - pd.to_timedelta(stays["age"] * 365.25, unit="D")
    spec = {f.name: f for f in ehr.features}
    m = ehr.measurements
    code = m["feature"].astype(str).map({n: meds_code(s) for n, s in spec.items()})
    events = pd.concat([
        pd.DataFrame({"subject_id": subject.to_numpy(), "time": birth.to_numpy(), "code": "MEDS_BIRTH",
                      "numeric_value": np.nan, "unit": None}),
        pd.DataFrame({"subject_id": subject.to_numpy(), "time": pd.NaT,
                      "code": np.where(stays["sex"] == 1.0, "GENDER//M", "GENDER//F"),
                      "numeric_value": np.nan, "unit": None}),
        pd.DataFrame({"subject_id": m["stay_id"].map(subject).to_numpy(),
                      "time": (m["time"] + pd.Timedelta(hours=MEDS_VISIT_HOUR)).to_numpy(),
                      "code": code.to_numpy(), "numeric_value": m["value"].to_numpy(dtype=float),
                      "unit": m["feature"].astype(str).map({n: s.unit for n, s in spec.items()}).to_numpy()}),
    ], ignore_index=True)
    events["time"] = events["time"].astype("datetime64[us]")
    events = events.sort_values(["subject_id", "time"], kind="stable", na_position="first")
    last_day = m.groupby("stay_id")["time"].max()
    labels = pd.DataFrame({
        "subject_id": subject.to_numpy(),
        "prediction_time": (stays["stay_id"].map(last_day) + pd.Timedelta(days=1)).astype("datetime64[us]").to_numpy(),
        "boolean_value": stays["label_mortality"].astype(bool).to_numpy(),
    })
    codes = pd.DataFrame({"code": [meds_code(f) for f in ehr.features], "description": [f.name for f in ehr.features]})
    for sub in ("data", "labels", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    events.to_parquet(root / "data" / "0.parquet", index=False)
    labels.to_parquet(root / "labels" / "mortality.parquet", index=False)
    codes.to_parquet(root / "metadata" / "codes.parquet", index=False)
    return root


PLANTED: tuple[str, ...] = tuple(planted_causes())  # the default recipe's true causes
