"""Side-by-side comparison of MLflow runs: metrics, data versions (DVC hashes) and the params that differ.

A pipeline run's own metrics are ``<stage>.<metric>``; its data versions are the ``eagrl.*md5`` tags of
its stage runs (also copied onto it as ``eagrl.<stage>.<key>`` when it closes), so two pipeline runs compare
stage by stage, as do two stage runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from eagrl.errors import EagrlError

VERSION_SUFFIX = "md5"


@dataclass
class Comparison:
    run_ids: list[str]
    names: list[str]
    metrics: dict[str, list] = field(default_factory=dict)  # key -> one value (or None) per run
    versions: dict[str, list] = field(default_factory=dict)
    params: dict[str, list] = field(default_factory=dict)  # only the params that differ (all with all_params)


def compare_runs(client, run_ids: list[str], all_params: bool = False) -> Comparison:
    """Collect the runs' metrics, data-version tags and params; a missing key is None for that run."""
    if len(run_ids) < 2:
        raise EagrlError(f"give at least two run ids to compare, got {len(run_ids)}")
    runs = []
    for run_id in run_ids:
        try:
            runs.append(client.get_run(run_id))
        except Exception as exc:  # noqa: BLE001 - MLflow raises its own exception per store
            raise EagrlError(f"no MLflow run {run_id!r} in {client.tracking_uri}: {exc}") from None
    cmp = Comparison(run_ids, [f"{r.info.run_name or ''} ({r.data.tags.get('eagrl.stage', '?')})" for r in runs])
    metrics = [dict(r.data.metrics) for r in runs]
    versions = [data_versions(client, r) for r in runs]
    params = [dict(r.data.params) for r in runs]
    cmp.metrics = _columns(metrics)
    cmp.versions = _columns(versions)
    cmp.params = {k: v for k, v in _columns(params).items() if all_params or len({str(x) for x in v}) > 1}
    return cmp


def data_versions(client, run) -> dict[str, str]:
    """``eagrl.*md5`` tags of the run and of its stage runs (keyed ``<stage>.<tag>``)."""
    found = {k.removeprefix("eagrl."): v for k, v in run.data.tags.items()
             if k.startswith("eagrl.") and k.endswith(VERSION_SUFFIX)}
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    for child in children:
        stage = child.data.tags.get("eagrl.stage", child.info.run_name)
        for k, v in child.data.tags.items():
            if k.startswith("eagrl.") and k.endswith(VERSION_SUFFIX):
                found.setdefault(f"{stage}.{k.removeprefix('eagrl.')}", v)
    return found


def _columns(per_run: list[dict]) -> dict[str, list]:
    keys = sorted({k for d in per_run for k in d})
    return {k: [d.get(k) for d in per_run] for k in keys}


def render(cmp: Comparison):
    """A rich table: one row per metric / data version / differing param, one column per run."""
    from rich.table import Table

    table = Table(title="MLflow runs side by side", show_lines=False)
    table.add_column("", style="bold")
    for run_id, name in zip(cmp.run_ids, cmp.names):
        table.add_column(f"{run_id}\n{name}", overflow="fold")
    for title, rows in (("metrics", cmp.metrics), ("data versions", cmp.versions), ("params that differ", cmp.params)):
        if not rows:
            continue
        table.add_row(f"[cyan]{title}[/cyan]", *[""] * len(cmp.run_ids))
        for key, values in rows.items():
            differ = len({str(v) for v in values}) > 1
            cells = [_fmt(v) for v in values]
            table.add_row(f"{key}{' *' if differ else ''}", *cells)
    return table


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
