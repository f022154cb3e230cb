"""The validation stage: Great Expectations suites on the native tables, the canonical EHR and the cohort.

Three gates, each stopping at its first error-level failure so later checks never run on broken input:

1. *native*: the source's required columns exist with the right types (from ``REQUIRED_COLUMNS``);
2. *canonical*: unique stay ids, plausible ages, label domain {0, 1}, admission before discharge, known
   feature names; measurement times inside the stay, no conflicting values at one (stay, time, feature);
3. *cohort*: per-feature physiologic plausibility, visits strictly before the prediction time, splits
   disjoint by patient, enough positives in every split.

Every check carries a severity: ``error`` stops the pipeline, ``warning`` is reported only. Checks of odd rows
that real data has a few of carry a threshold instead (``error_above``, a share of rows from the
``validation`` config): a failure on more than that share of the rows is an error, on fewer a warning. Impossible
times (a measurement more than ``time_tolerance_hours`` before admission or after discharge, a prediction time
before admission, a visit at or after the prediction time) fail above ``impossible_time_max_share`` (default 0:
any row); conflicting duplicates above ``conflict_max_share``; implausible values above
``implausible_max_share``. The result is a
:class:`ValidationReport` that renders itself to HTML (a self-contained page beside the run: GX's Data Docs
need a file-backed GX project, which a pipeline step does not keep) and to flat metrics.
"""
from __future__ import annotations

import html
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from eagrl.config import Config, ValidationConfig
from eagrl.data.cohort import SPLITS, Cohort, build_cohort
from eagrl.data.schema import RawEHR
from eagrl.data.sources import get_source
from eagrl.errors import DataError

log = logging.getLogger(__name__)

def column_kind(series: pd.Series) -> str:
    """numeric | datetime | string | other, by pandas' own predicates (robust to pandas 3 str and tz dtypes)."""
    t = pd.api.types
    if t.is_bool_dtype(series) or t.is_numeric_dtype(series):
        return "numeric"
    if t.is_datetime64_any_dtype(series):
        return "datetime"
    if t.is_string_dtype(series) or t.is_object_dtype(series):
        return "string"
    return "other"


@dataclass
class Check:
    """One expectation on one table, with the severity that decides whether a failure stops the run."""

    table: str
    expectation: Any  # a great_expectations.expectations.Expectation
    severity: str = "error"  # "error" | "warning"
    why: str = ""
    # A share of rows: a failure on more than this share is an error, on this share or fewer a warning
    # (None: ``severity`` decides alone).
    error_above: float | None = None

    def severity_of(self, share: float) -> str:
        if self.error_above is None:
            return self.severity
        return "error" if share > self.error_above else "warning"


@dataclass
class CheckResult:
    gate: str
    table: str
    expectation: str
    column: str
    severity: str
    success: bool
    unexpected_count: int
    element_count: int
    examples: list
    why: str
    share: float = 0.0  # unexpected rows over the rows checked (missing values and ignored rows left out)
    missing_count: int = 0
    error_above: float | None = None

    @property
    def message(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        if self.success:
            return f"{self.expectation} on {where}: ok"
        rows = (f"{self.unexpected_count} of {self.element_count - self.missing_count} rows unexpected "
                f"({self.share:.2%})" if self.element_count else "failed")
        eg = f", e.g. {self.examples}" if self.examples else ""
        limit = f"; an error above {self.error_above:.2%} of rows" if self.error_above is not None else ""
        why = f" ({self.why}{limit})" if self.why or limit else ""
        return f"{self.expectation} failed on {where}: {rows}{eg}{why}"


@dataclass
class ValidationReport:
    dataset: str
    task: str
    results: list[CheckResult] = field(default_factory=list)
    fatal: str | None = None  # a file that could not be read at all, or a gate that stopped the run

    @property
    def errors(self) -> list[CheckResult]:
        return [r for r in self.results if not r.success and r.severity == "error"]

    @property
    def warnings(self) -> list[CheckResult]:
        return [r for r in self.results if not r.success and r.severity == "warning"]

    @property
    def passed(self) -> bool:
        return self.fatal is None and not self.errors

    def summary_line(self) -> str:
        if self.fatal and not self.errors:
            return f"validation of {self.dataset} failed: {self.fatal}"
        if self.errors:
            more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            return f"validation of {self.dataset} failed: {self.errors[0].message}{more}"
        return (f"validation of {self.dataset} passed: {len(self.results)} checks, "
                f"{len(self.warnings)} warnings")

    def metrics(self) -> dict[str, float]:
        return {
            "validation_checks": len(self.results),
            "validation_errors": len(self.errors) + (1 if self.fatal and not self.errors else 0),
            "validation_warnings": len(self.warnings),
            "validation_passed": float(self.passed),
        }

    def to_json(self, path: str | Path) -> Path:
        data = {"dataset": self.dataset, "task": self.task, "passed": self.passed, "fatal": self.fatal,
                "results": [asdict(r) | {"message": r.message} for r in self.results]}
        Path(path).write_text(json.dumps(data, indent=1, default=str))
        return Path(path)

    def to_html(self, path: str | Path) -> Path:
        Path(path).write_text(_render_html(self), encoding="utf-8")
        return Path(path)


# ====================================================================== running suites
def _run_suite(gate: str, checks: list[Check], tables: dict[str, pd.DataFrame], max_examples: int) -> list[CheckResult]:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_pandas(f"eagrl_{gate}")
    out: list[CheckResult] = []
    for table in dict.fromkeys(c.table for c in checks):
        batch = (source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
                 .get_batch(batch_parameters={"dataframe": tables[table]}))
        mine = [c for c in checks if c.table == table]
        suite = gx.ExpectationSuite(name=f"{gate}.{table}")
        for c in mine:
            suite.add_expectation(c.expectation)
        res = batch.validate(suite, result_format={"result_format": "SUMMARY",
                                                   "partial_unexpected_count": max_examples})
        for c, r in zip(mine, res.results):
            cfg = r.expectation_config
            kw = cfg.kwargs
            column = kw.get("column") or "/".join(str(kw[k]) for k in ("column_A", "column_B") if k in kw)
            result = r.result or {}
            examples = [_plain(x) for x in (result.get("partial_unexpected_list") or [])][:max_examples]
            unexpected, rows = int(result.get("unexpected_count") or 0), int(result.get("element_count") or 0)
            share = (float(result["unexpected_percent"]) / 100 if result.get("unexpected_percent") is not None
                     else unexpected / rows if rows else 0.0)
            out.append(CheckResult(
                gate=gate, table=table, expectation=cfg.type, column=str(column or ""),
                severity=c.severity_of(share), success=bool(r.success), unexpected_count=unexpected,
                element_count=rows, examples=examples, why=c.why, share=share, error_above=c.error_above,
                missing_count=int(result.get("missing_count") or 0),
            ))
    return out


def _plain(x: Any) -> Any:
    """JSON-friendly example values (datetimes as ISO text, numpy scalars as Python)."""
    import numpy as np

    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.datetime64, pd.Timestamp)):
        return str(pd.Timestamp(x))
    if hasattr(x, "item"):
        try:
            return x.item()
        except (ValueError, TypeError):
            pass
    return str(x) if not isinstance(x, (int, float, str, bool)) or x is None else x


# ====================================================================== the suites
def native_checks(required: dict[str, dict[str, str]], native: dict[str, pd.DataFrame],
                  domains: dict[str, dict[str, list | tuple]] | None = None) -> list[Check]:
    """Required columns exist; those present have the declared kind of type and lie in their domain."""
    from great_expectations import expectations as gxe

    checks: list[Check] = []
    for table, cols in required.items():
        for col in cols:
            checks.append(Check(table, gxe.ExpectColumnToExist(column=col), "error", "required column"))
    checks.append(Check("column_types", gxe.ExpectColumnPairValuesToBeEqual(column_A="expected", column_B="actual"),
                        "error", "declared kind of each required column (table.column: kind)"))
    for table, cols in (domains or {}).items():
        present = native.get(table, pd.DataFrame()).columns
        for col, domain in cols.items():
            if col not in present:
                continue
            if isinstance(domain, tuple):
                exp = gxe.ExpectColumnValuesToBeBetween(column=col, min_value=domain[0], max_value=domain[1])
                why = f"must lie in [{domain[0]}, {domain[1]}]"
            else:
                exp = gxe.ExpectColumnValuesToBeInSet(column=col, value_set=list(domain))
                why = f"must be one of {list(domain)}"
            checks.append(Check(table, exp, "error", why))
    return checks


def column_types(required: dict[str, dict[str, str]], native: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per present required column: ``table.column: kind`` expected against actual."""
    rows = []
    for table, cols in required.items():
        df = native.get(table)
        for col, kind in cols.items():
            if df is not None and col in df.columns and kind != "any":
                rows.append({"expected": f"{table}.{col}: {kind}", "actual": f"{table}.{col}: {column_kind(df[col])}"})
    return pd.DataFrame(rows, columns=["expected", "actual"])


def canonical_checks(raw: RawEHR, task: str, vcfg: ValidationConfig | None = None
                     ) -> tuple[list[Check], dict[str, pd.DataFrame]]:
    from great_expectations import expectations as gxe

    vcfg = vcfg or ValidationConfig()
    stays, meas = raw.stays, raw.measurements
    label = f"label_{task}"
    tol = pd.Timedelta(hours=vcfg.time_tolerance_hours)
    in_stay = meas[["stay_id", "time"]].merge(
        stays[["stay_id", "admit_time", "discharge_time"]], on="stay_id", how="left"
    )
    admit, discharge = _plausible(in_stay["admit_time"]), _plausible(in_stay["discharge_time"])  # no overflow
    in_stay["discharge_day_end"] = discharge.dt.normalize() + pd.Timedelta(days=1)
    in_stay["earliest"] = admit - tol
    in_stay["latest"] = discharge + tol
    impossible, hours = vcfg.impossible_time_max_share, f"{vcfg.time_tolerance_hours:g} h"
    checks = [
        Check("stays", gxe.ExpectColumnValuesToBeUnique(column="stay_id"), "error", "one row per stay"),
        Check("stays", gxe.ExpectColumnValuesToNotBeNull(column="stay_id"), "error"),
        Check("stays", gxe.ExpectColumnValuesToNotBeNull(column="patient_id"), "error"),
        Check("stays", gxe.ExpectColumnValuesToBeBetween(column="age", min_value=0, max_value=120), "error",
              "age in years must lie in [0, 120]"),
        Check("stays", gxe.ExpectColumnValuesToBeInSet(column="sex", value_set=[0.0, 1.0]), "error",
              "1 = male, 0 = female"),
        Check("stays", gxe.ExpectColumnValuesToBeInSet(column=label, value_set=[0.0, 1.0]), "error",
              f"the {task} label is binary"),
        Check("stays", gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="discharge_time", column_B="admit_time", or_equal=True, ignore_row_if="either_value_is_missing"),
            "error", "discharge must not precede admission"),
        Check("measurements", gxe.ExpectColumnValuesToBeInSet(column="feature", value_set=raw.feature_names()),
              "error", "every feature needs a spec"),
        Check("measurements", gxe.ExpectColumnValuesToNotBeNull(column="time"), "error"),
        Check("measurements_in_stay", gxe.ExpectColumnValuesToNotBeNull(column="admit_time"), "error",
              "measurement of an unknown stay"),
        Check("stays", gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="prediction_time", column_B="admit_time", or_equal=True, ignore_row_if="either_value_is_missing"),
            why="prediction time before admission", error_above=impossible),
        Check("measurements_in_stay", gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="time", column_B="earliest", or_equal=True, ignore_row_if="either_value_is_missing"),
            why=f"measured more than {hours} before admission", error_above=impossible),
        Check("measurements_in_stay", gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="latest", column_B="time", or_equal=True, ignore_row_if="either_value_is_missing"),
            why=f"measured more than {hours} after discharge", error_above=impossible),
        Check("measurements_in_stay", gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="time", column_B="admit_time", or_equal=True, ignore_row_if="either_value_is_missing"),
            "warning", f"measured before admission (within {hours})"),
        Check("measurements_in_stay", gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="discharge_day_end", column_B="time", ignore_row_if="either_value_is_missing"),
            "warning", f"measured after the day of discharge (within {hours})"),
        Check("measurement_keys", gxe.ExpectColumnValuesToBeNull(column="conflicting"),
              why="another value at the same stay, time and feature", error_above=vcfg.conflict_max_share),
        Check("times", gxe.ExpectColumnValuesToBeNull(column="impossible"), "error",
              f"a date before {PLAUSIBLE_TIMES[0]:%Y} or from {PLAUSIBLE_TIMES[1]:%Y} on cannot be real"),
    ]
    return checks, {"stays": stays, "measurements": meas[["stay_id", "time", "feature"]],
                    "measurements_in_stay": in_stay, "measurement_keys": conflicting_keys(meas),
                    "times": impossible_times(stays, meas)}


PLAUSIBLE_TIMES = (pd.Timestamp("1800-01-01"), pd.Timestamp("2250-01-01"))  # de-identified MIMIC dates reach the 2200s


def _plausible(times: pd.Series) -> pd.Series:
    """The times inside :data:`PLAUSIBLE_TIMES`, NaT elsewhere (the ``times`` check reports those)."""
    lo, hi = PLAUSIBLE_TIMES
    return times.where((times >= lo) & (times < hi))


def impossible_times(stays: pd.DataFrame, meas: pd.DataFrame) -> pd.DataFrame:
    """One row per timestamp of the stays and measurements: ``impossible`` is ``table.column=value`` for a time
    outside :data:`PLAUSIBLE_TIMES`, else None."""
    parts = []
    for table, df, cols in (("stays", stays, ("admit_time", "discharge_time", "prediction_time")),
                            ("measurements", meas, ("time",))):
        for col in cols:
            if col not in df.columns:
                continue
            t = df[col].dropna()
            bad = t[_plausible(t).isna()]
            out = pd.Series(None, index=t.index, dtype=object)
            out[bad.index] = (f"{table}.{col}=" + bad.astype(str)).to_numpy()
            parts.append(out)
    return pd.DataFrame({"impossible": pd.concat(parts, ignore_index=True) if parts else pd.Series([], dtype=object)})


def conflicting_keys(meas: pd.DataFrame) -> pd.DataFrame:
    """One row per measurement: ``conflicting`` is ``stay@time:feature`` where another row of that key has another
    value, else None (the same value twice is a harmless duplicate)."""
    keys = ["stay_id", "time", "feature"]
    distinct = meas.groupby(keys, observed=True, sort=False)["value"].transform("nunique")
    bad = meas[distinct.to_numpy() > 1]
    out = pd.Series(None, index=meas.index, dtype=object, name="conflicting")
    if len(bad):
        out[bad.index] = (bad["stay_id"].astype(str) + "@" + bad["time"].astype(str) + ":"
                          + bad["feature"].astype(str) + "=" + bad["value"].astype(str)).to_numpy()
    return out.to_frame()


def cohort_checks(cohort: Cohort, min_positives: int, vcfg: ValidationConfig | None = None
                  ) -> tuple[list[Check], dict[str, pd.DataFrame]]:
    from great_expectations import expectations as gxe

    vcfg = vcfg or ValidationConfig()
    s, v = cohort.stays, cohort.visits
    checks: list[Check] = []
    for spec in cohort.features:
        if spec.plausible_low is not None or spec.plausible_high is not None:
            checks.append(Check("visits", gxe.ExpectColumnValuesToBeBetween(
                column=spec.name, min_value=spec.plausible_low, max_value=spec.plausible_high),
                why=f"physiologic range {spec.plausible_low}..{spec.plausible_high} {spec.unit}".strip(),
                error_above=vcfg.implausible_max_share))
    timing = v[["stay_id", "time"]].merge(s[["stay_id", "prediction_time"]], on="stay_id")
    per_patient = s.groupby("patient_id")["split"].nunique().rename("n_splits").reset_index()
    per_split = (s.groupby("split")["label"].agg(["size", "sum"]).reindex(list(SPLITS), fill_value=0)
                 .rename(columns={"size": "stays", "sum": "positives"}).reset_index())
    checks += [
        Check("timing", gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="prediction_time", column_B="time"),
              why="every visit strictly before the prediction time (no leakage)",
              error_above=vcfg.impossible_time_max_share),
        Check("stays", gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)), "error"),
        Check("stays", gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1]), "error"),
        Check("stays", gxe.ExpectColumnValuesToBeBetween(column="n_visits", min_value=1), "error"),
        Check("patients", gxe.ExpectColumnValuesToBeBetween(column="n_splits", max_value=1), "error",
              "a patient's stays must all be in one split"),
        Check("splits", gxe.ExpectColumnValuesToBeBetween(column="positives", min_value=min_positives), "error",
              f"each split needs at least {min_positives} positives for AUROC/AUPRC"),
        Check("splits", gxe.ExpectColumnValuesToBeBetween(column="stays", min_value=1), "error", "no empty split"),
    ]
    tables = {"visits": v, "timing": timing, "stays": s, "patients": per_patient, "splits": per_split}
    return checks, tables


# ====================================================================== the stage's library function
def one_line(exc: BaseException) -> str:
    """An error's message on one line: a library's text quoted in it (pyarrow's parse errors) may span several."""
    return " ".join(str(exc).split()) or type(exc).__name__


def validate_source(cfg: Config) -> tuple[ValidationReport, Cohort | None]:
    """Read, check and (if the gates pass) build the cohort of ``cfg.data``; never raises on bad data.

    Returns the report and the cohort (None when a gate failed).
    """
    dcfg, vcfg = cfg.data, cfg.validation
    report = ValidationReport(dataset=dcfg.dataset, task=dcfg.task)
    source = get_source(dcfg.dataset)
    path = Path(dcfg.data_path) if dcfg.data_path else source.default_path()
    try:
        native = source.read(path)
    except DataError as exc:
        report.fatal = one_line(exc)
        return report, None

    checks = native_checks(source.REQUIRED_COLUMNS, native, getattr(source, "DOMAINS", None))
    tables = {**native, "column_types": column_types(source.REQUIRED_COLUMNS, native)}
    report.results += _run_suite("native", checks, tables, vcfg.max_examples)
    if report.errors:
        report.fatal = "the source tables do not have the required columns and types"
        return report, None
    try:
        raw = source.to_raw(native, dcfg)
    except DataError as exc:
        report.fatal = one_line(exc)
        return report, None

    checks, tables = canonical_checks(raw, dcfg.task, vcfg)
    report.results += _run_suite("canonical", checks, tables, vcfg.max_examples)
    if report.errors:
        report.fatal = "the canonical stays/measurements failed an error-level check"
        return report, None
    try:
        cohort = build_cohort(raw, dcfg)
    except DataError as exc:
        report.fatal = one_line(exc)
        return report, None
    checks, tables = cohort_checks(cohort, vcfg.min_positives_per_split, vcfg)
    report.results += _run_suite("cohort", checks, tables, vcfg.max_examples)
    if report.errors:
        report.fatal = "the cohort failed an error-level check"
        return report, None
    return report, cohort


# ====================================================================== HTML
def _render_html(r: ValidationReport) -> str:
    status = "PASSED" if r.passed else "FAILED"
    color = "#1a7f37" if r.passed else "#cf222e"
    rows = []
    for c in sorted(r.results, key=lambda c: (c.success, c.severity != "error")):
        state = "ok" if c.success else c.severity
        badge = {"ok": "#1a7f37", "error": "#cf222e", "warning": "#9a6700"}[state]
        rows.append(
            "<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in (c.gate, c.table, c.column, c.expectation))
            + f'<td style="color:{badge};font-weight:bold">{state}</td>'
            + f"<td>{c.unexpected_count} / {c.element_count} ({c.share:.2%})"
            + (f"; error above {c.error_above:.2%}" if c.error_above is not None else "")
            + f"</td><td>{html.escape(json.dumps(c.examples, default=str))}</td>"
            + f"<td>{html.escape(c.why)}</td></tr>"
        )
    fatal = f"<p><b>Stopped:</b> {html.escape(r.fatal)}</p>" if r.fatal else ""
    title = f"eagrl validation: {html.escape(r.dataset)}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ddd;padding:4px 8px;text-align:left}}th{{background:#f6f8fa}}</style></head><body>
<h1>Validation of {html.escape(r.dataset)} ({html.escape(r.task)}): <span style="color:{color}">{status}</span></h1>
<p>{len(r.results)} checks, {len(r.errors)} errors, {len(r.warnings)} warnings.</p>{fatal}
<table><tr><th>gate</th><th>table</th><th>column</th><th>expectation</th><th>result</th><th>unexpected / rows</th>
<th>examples</th><th>why</th></tr>{"".join(rows)}</table></body></html>"""

