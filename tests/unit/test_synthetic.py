"""The planted-cause synthetic cohort: seeded, caused by its planted labs only, loaded through the pipeline
as ``--dataset synthetic`` and, from its MEDS export, as ``--dataset meds``."""
import numpy as np
import pandas as pd
import pytest

from eagrl.config import DataConfig, load_config
from eagrl.data import synthetic
from eagrl.data.cohort import build_cohort
from eagrl.data.sources import get_source
from eagrl.data.validation import validate_source
from eagrl.errors import DataError


def small(**update) -> synthetic.SyntheticConfig:
    return synthetic.default_recipe().model_copy(update={"n_stays": 80, **update})


def test_default_recipe_has_twenty_labs_and_two_planted_causes():
    cfg = synthetic.default_recipe()
    assert cfg.n_stays == 400 and len(cfg.labs) == 20
    assert all(lab.unit and lab.ref_low < lab.ref_high for lab in cfg.labs)
    assert synthetic.planted_causes(cfg) == list(synthetic.PLANTED) == ["Lactate", "Albumin"]
    assert synthetic.planted_causes(cfg, meds=True) == ["LAB//Lactate//mmol/L", "LAB//Albumin//g/L"]


def test_a_prompt_lists_the_planted_causes_mid_record_so_naming_the_first_labs_scores_nothing():
    """The learning ladder asks whether a policy names the planted causes. Prompts list labs in catalogue order,
    and a 135M model names the first labs it reads (the default recipe once listed Lactate and Albumin first:
    naming the first two scored Jaccard 1.0 while learning nothing)."""
    from eagrl.config.llm import GenerationConfig
    from eagrl.llm.prompt import build_prompt
    from eagrl.llm.rewards import r_att

    ehr = synthetic.generate(small())
    cohort = build_cohort(ehr.to_raw(), DataConfig(dataset="synthetic", task="mortality"))
    stay = cohort.stays["stay_id"].iloc[0]
    user = build_prompt(cohort.patient(stay), cohort.features, dataset="synthetic", task="mortality",
                        cfg=GenerationConfig(serialization="compact")).user
    listed = [line[2:].split(":")[0] for line in user.splitlines() if line.startswith("- ")]
    assert set(ehr.planted) <= set(listed) and len(listed) == 20
    assert min(listed.index(name) for name in ehr.planted) >= 5
    for k in range(1, 6):  # a policy that names the first k labs it read
        assert r_att(listed[:k], set(ehr.planted)) == 0.0
    assert r_att(listed[-3:], set(ehr.planted)) == 0.0  # nor the last ones


def test_the_listing_order_moves_labs_in_the_record_and_changes_no_value():
    listed, catalogue = synthetic.generate(small()), synthetic.generate(small(order=None))
    assert [f.name for f in listed.features] == small().order
    assert [f.name for f in catalogue.features] == [lab.name for lab in small().labs] != small().order
    key = ["stay_id", "time", "feature"]
    pd.testing.assert_frame_equal(listed.measurements.sort_values(key).reset_index(drop=True),
                                  catalogue.measurements.sort_values(key).reset_index(drop=True))
    pd.testing.assert_frame_equal(listed.stays, catalogue.stays)
    with pytest.raises(ValueError, match="synthetic order must list every lab"):
        synthetic.SyntheticConfig.model_validate({**small().model_dump(), "order": small().order[1:]})


def test_a_lab_given_its_own_scale_spreads_that_lab_alone_and_leaves_its_range_more_often():
    """``scales`` widens the named labs' levels around the same draws; every other lab keeps ``level_scale``."""
    def out_of_range_share(ehr, name):
        lab = next(f for f in ehr.features if f.name == name)
        v = ehr.measurements.loc[ehr.measurements["feature"] == name, "value"]
        return float(((v < lab.ref_low) | (v > lab.ref_high)).mean())

    base = synthetic.generate(small(level_scale=0.5))
    wide = synthetic.generate(small(level_scale=0.5, scales={"Lactate": 1.5}))
    assert out_of_range_share(wide, "Lactate") > 3 * out_of_range_share(base, "Lactate")
    key = ["stay_id", "time", "feature"]
    others = [m[m["feature"] != "Lactate"].sort_values(key).reset_index(drop=True) for m in
              (base.measurements, wide.measurements)]
    pd.testing.assert_frame_equal(*others)
    pd.testing.assert_frame_equal(base.stays, wide.stays)  # the outcome follows the levels z, not the spread
    for bad, msg in (({"Lactic": 2.0}, "synthetic scales names lab"),
                     ({"Lactate": 0.0}, "synthetic scales must be > 0")):
        with pytest.raises(ValueError, match=msg):
            synthetic.SyntheticConfig.model_validate({**small().model_dump(), "scales": bad})


def test_a_deviation_risk_labels_the_same_records_by_distance_from_the_centre():
    """``risk_shape: deviation`` keeps every draw (the records are identical) and labels by |z| of the planted labs:
    the positives sit further from the reference centre, on either side, where under ``level`` their Lactate sits
    above it and their Albumin below (weights +1 and -1)."""
    level = synthetic.generate()
    dev = synthetic.generate(synthetic.default_recipe().model_copy(
        update={"risk_shape": "deviation", "planted": {"Lactate": 1.0, "Albumin": 1.0}}))
    pd.testing.assert_frame_equal(level.measurements, dev.measurements)
    assert dev.stays["label_mortality"].mean() == pytest.approx(0.3)
    assert (level.stays["label_mortality"] != dev.stays["label_mortality"]).mean() > 0.2

    def shift(ehr, name):  # positives minus negatives: mean first value, and mean distance from the centre
        lab = next(f for f in ehr.features if f.name == name)
        first = ehr.measurements[ehr.measurements["feature"] == name].sort_values("time").groupby("stay_id").first()
        z = ((first["value"] - (lab.ref_low + lab.ref_high) / 2) / ((lab.ref_high - lab.ref_low) / 2))
        y = ehr.stays.set_index("stay_id")["label_mortality"].reindex(z.index)
        return z[y == 1].mean() - z[y == 0].mean(), z[y == 1].abs().mean() - z[y == 0].abs().mean()

    assert shift(level, "Lactate")[0] > 0.8 and shift(level, "Albumin")[0] < -0.8
    for name in ("Lactate", "Albumin"):
        signed, distance = shift(dev, name)
        assert distance > 0.4 and abs(signed) < 0.35, (name, signed, distance)  # Lactate's floor at 0 tilts it
    with pytest.raises(ValueError, match="risk_shape"):
        synthetic.SyntheticConfig.model_validate({**small().model_dump(), "risk_shape": "quadratic"})


def test_generation_is_seeded():
    a, b, c = synthetic.generate(small()), synthetic.generate(small()), synthetic.generate(small(seed=1))
    pd.testing.assert_frame_equal(a.stays, b.stays)
    pd.testing.assert_frame_equal(a.measurements, b.measurements)
    assert not np.allclose(a.measurements["value"].to_numpy()[:100], c.measurements["value"].to_numpy()[:100])


def test_only_the_planted_labs_carry_the_outcome():
    ehr = synthetic.generate()
    assert ehr.stays["label_mortality"].mean() == pytest.approx(0.3)
    means = ehr.measurements.groupby(["stay_id", "feature"])["value"].mean().unstack()
    y = ehr.stays.set_index("stay_id").loc[means.index, "label_mortality"]
    corr = means.apply(lambda col: np.corrcoef(col.fillna(col.mean()), y)[0, 1])
    assert corr["Lactate"] > 0.4 and corr["Albumin"] < -0.4  # planted weights +1 and -1
    noise = corr.drop(["Lactate", "Albumin"]).abs()
    assert noise.max() < 0.2, noise.sort_values().tail(3)
    n_vis = ehr.measurements.groupby("stay_id")["time"].nunique()
    assert n_vis.between(3, 6).all()


def test_loads_through_the_validated_pipeline_as_a_source(tmp_path):
    recipe = synthetic.save_recipe(small(), tmp_path / "recipe.yaml")
    cfg = load_config("smoke", {"data.dataset": "synthetic", "data.task": "mortality", "data.data_path": str(recipe),
                                "data.max_visits": None})
    report, cohort = validate_source(cfg)
    assert report.passed, report.summary_line()
    assert cohort.dataset == "synthetic" and cohort.feature_names == [lab.name for lab in small().listed()]
    assert set(cohort.stays["split"]) == {"train", "val", "test"} and len(cohort.stays) == 80
    lab = next(f for f in cohort.features if f.name == "Lactate")
    assert (lab.unit, lab.reference_range) == ("mmol/L", "0.5-2.2")
    assert get_source("synthetic").default_path() == synthetic.default_recipe_path()


def test_meds_export_loads_as_the_same_cohort(tmp_path):
    ehr = synthetic.generate(small())
    root = synthetic.export_meds(ehr, tmp_path / "meds")
    meds = get_source("meds")
    cfg = DataConfig(dataset="meds", task="mortality")
    cohort = build_cohort(meds.to_raw(meds.read(root), cfg), cfg)
    assert len(cohort.stays) == len(ehr.stays)
    assert set(synthetic.planted_causes(ehr.config, meds=True)) <= set(cohort.feature_names)
    assert len(cohort.feature_names) == 20
    assert cohort.stays["label"].sum() == ehr.stays["label_mortality"].sum()
    # the same values: stay 0's lactate series
    stay0 = cohort.stays.loc[cohort.stays["patient_id"] == "0", "stay_id"].iloc[0]
    got = cohort.patient(stay0).values["LAB//Lactate//mmol/L"]
    want = ehr.measurements.query("stay_id == 'syn00000' and feature == 'Lactate'")["value"].tolist()
    assert [v for v in got if not np.isnan(v)] == pytest.approx(want)
    with pytest.raises(DataError, match="already holds files"):
        synthetic.export_meds(ehr, root)


def test_a_bad_recipe_is_a_one_line_error_naming_the_file(tmp_path):
    bad = tmp_path / "synthetic.yaml"
    bad.write_text("seed: 0\nplanted: {Troponin: 1.0}\nlabs: []\n")
    with pytest.raises(DataError, match=r"synthetic recipe .*synthetic.yaml is invalid: .*Troponin"):
        synthetic.load_recipe(tmp_path)
    with pytest.raises(DataError, match="no synthetic recipe"):
        synthetic.load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(DataError, match="already exists"):
        synthetic.save_recipe(small(), bad)
