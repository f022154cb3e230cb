"""TJH from the raw xlsx: the published preprocessing, then the canonical cohort."""
import numpy as np
import pandas as pd
import pytest

from eagrl.config import DataConfig
from eagrl.data.cohort import build_cohort
from eagrl.data.sources import get_source


@pytest.fixture(scope="module")
def tjh_raw(shared_data):
    src = get_source("tjh")
    return src.to_raw(src.read(shared_data / "tjh"), DataConfig(dataset="tjh", task="mortality"))


def test_matches_the_published_preprocessing(tjh_raw, shared_data):
    # The published table keeps single-visit patients: 361 patients (195 survived, 166 died), 1,704 visits.
    cohort = build_cohort(tjh_raw, DataConfig(dataset="tjh", task="mortality", min_visits=1))
    stats = cohort.statistics()
    assert (stats["n_patients"], stats["n_visits"], stats["n_positive"]) == (361, 1704, 166)
    assert stats["n_features"] == 73 and list(cohort.stays.columns[:4]) == ["stay_id", "patient_id", "sex", "age"]
    # ... and the same values, cell by cell, as the formatted table published with the pyehr pipeline.
    ref = pd.read_parquet(shared_data / "tjh" / "tjh_dataset_formatted.parquet")
    ref["stay_id"] = ref["PatientID"].astype(int).astype(str)
    ref = ref.sort_values(["stay_id", "RecordTime"]).reset_index(drop=True)
    ours = cohort.visits.sort_values(["stay_id", "time"]).reset_index(drop=True)
    ref_cols = {c.strip(): c for c in ref.columns}
    np.testing.assert_allclose(ours[cohort.feature_names].to_numpy(float),
                               ref[[ref_cols[f] for f in cohort.feature_names]].to_numpy(float), rtol=1e-9)
    assert (ours["time"].to_numpy() == ref["RecordTime"].astype("datetime64[ns]").to_numpy()).all()
    sex = ref.groupby("stay_id")["Sex"].first()
    assert (cohort.stays.set_index("stay_id")["sex"] == sex.reindex(cohort.stays["stay_id"]).to_numpy()).all()


def test_method_cohort_keeps_two_visit_stays_with_disjoint_stratified_splits(tjh_raw):
    cohort = build_cohort(tjh_raw, DataConfig(dataset="tjh", task="mortality"))
    s = cohort.stays
    assert (s["n_visits"] >= 2).all() and len(s) == 323
    assert s.groupby("patient_id")["split"].nunique().max() == 1
    fractions = s["split"].value_counts(normalize=True)
    assert abs(fractions["train"] - 0.7) < 0.03 and abs(fractions["test"] - 0.2) < 0.03
    rates = s.groupby("split")["label"].mean()
    assert rates.max() - rates.min() < 0.05  # stratified on the label


def test_split_is_seeded(tjh_raw):
    a = build_cohort(tjh_raw, DataConfig(dataset="tjh", task="mortality", seed=1)).stays.set_index("stay_id")["split"]
    b = build_cohort(tjh_raw, DataConfig(dataset="tjh", task="mortality", seed=1)).stays.set_index("stay_id")["split"]
    c = build_cohort(tjh_raw, DataConfig(dataset="tjh", task="mortality", seed=2)).stays.set_index("stay_id")["split"]
    assert a.equals(b) and not a.equals(c)


def test_no_visit_at_or_after_the_prediction_time(tjh_raw):
    cohort = build_cohort(tjh_raw, DataConfig(dataset="tjh", task="mortality"))
    joined = cohort.visits.merge(cohort.stays[["stay_id", "prediction_time"]], on="stay_id")
    assert (joined["time"] < joined["prediction_time"]).all()


def test_normalisation_uses_train_values_only(tjh_raw):
    cfg = DataConfig(dataset="tjh", task="mortality")
    base = build_cohort(tjh_raw, cfg)
    test_ids = set(base.split_ids("test"))
    poisoned = tjh_raw.measurements.copy()
    poisoned.loc[poisoned["stay_id"].isin(test_ids), "value"] *= 1000
    changed = build_cohort(type(tjh_raw)(**{**tjh_raw.__dict__, "measurements": poisoned}), cfg)
    assert changed.meta["normalization"] == base.meta["normalization"]


def test_forward_fill_stays_within_a_stay_and_gaps_get_the_train_median(tjh_raw):
    cohort = build_cohort(tjh_raw, DataConfig(dataset="tjh", task="mortality"))
    f = "Interleukin 6"  # sparse: measured for few patients
    stats = cohort.meta["normalization"][f]
    median_z = (stats["median"] - stats["mean"]) / stats["std"]
    raw = cohort.visits.set_index(["stay_id", "visit"])[f]
    model = cohort.visits_model.set_index(["stay_id", "visit"])[f]
    never = raw.groupby(level=0).transform(lambda s: s.isna().all())
    assert np.allclose(model[never], median_z, atol=1e-5)
    # a value seen earlier in the same stay is carried forward
    for sid, series in raw[~never].groupby(level=0):
        vals = series.to_numpy()
        first = np.flatnonzero(~np.isnan(vals))[0]
        z = model.loc[sid].to_numpy()
        expected_after = (pd.Series(vals).ffill().to_numpy()[first:] - stats["mean"]) / stats["std"]
        assert np.allclose(z[first:], expected_after, atol=1e-4)
        assert np.allclose(z[:first], median_z, atol=1e-5)


def test_tensors_are_left_aligned_and_masked(tjh_raw):
    cohort = build_cohort(tjh_raw, DataConfig(dataset="tjh", task="mortality"))
    t = cohort.tensors("train")
    b, steps, feats = t["x"].shape
    assert feats == 73 and b == len(cohort.split_ids("train"))
    assert (t["mask"].sum(1) == t["lengths"]).all()
    assert (t["x"][~t["mask"]] == 0).all()
    assert set(np.unique(t["y"])) == {0.0, 1.0}


def test_patient_record_carries_raw_values(tjh_raw):
    cohort = build_cohort(tjh_raw, DataConfig(dataset="tjh", task="mortality"))
    sid = cohort.split_ids("test")[0]
    rec = cohort.patient(sid)
    v = cohort.visits[cohort.visits["stay_id"] == sid]
    assert len(rec.visit_times) == len(v)
    assert np.allclose(rec.values["albumin"], v["albumin"].to_numpy(float), equal_nan=True)


# ---------------------------------------------------------------- corrupt workbooks (found by fuzzing)
def _rewrite_member(src, dest, member, transform):
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, transform(data) if info.filename == member else data)


def test_corrupt_sheet_xml_is_a_data_error(shared_data, tmp_path):
    """Fuzzing (tests/integration/test_fuzz_loaders.py) found openpyxl's xml ParseError escaping read(): a byte
    flipped in the sheet's XML. Here the sheet XML is cut in the middle of a tag; the reader (calamine since
    session 25) names it an XmlError."""
    from eagrl.errors import DataError

    bad = tmp_path / "tjh.xlsx"
    _rewrite_member(shared_data / "tjh" / "time_series_375_prerpocess_en.xlsx", bad, "xl/worksheets/sheet1.xml",
                    lambda d: d[: len(d) // 2] + b"<<" + d[len(d) // 2:])
    with pytest.raises(DataError, match=r"tjh\.xlsx is not a readable xlsx workbook .*XmlError"):
        get_source("tjh").read(bad)


def test_corrupt_deflate_stream_is_a_data_error(shared_data, tmp_path):
    """Fuzzing found zlib.error (and ParseError) escaping read(): bytes flipped inside the sheet's compressed
    stream. The flips here land in the middle of that stream (its offset from the zip's own directory); they
    garble the XML that zlib still inflates."""
    import zipfile

    from eagrl.errors import DataError

    src = shared_data / "tjh" / "time_series_375_prerpocess_en.xlsx"
    data = src.read_bytes()
    with zipfile.ZipFile(src) as z:
        info = z.getinfo("xl/worksheets/sheet1.xml")
    header = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    middle = header + info.compress_size // 2
    bad = tmp_path / "tjh.xlsx"
    bad.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:])
    with pytest.raises(DataError, match=r"tjh\.xlsx is not a readable xlsx workbook"):
        get_source("tjh").read(bad)
