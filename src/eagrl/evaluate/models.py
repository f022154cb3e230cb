"""Resolve the entries of the comparison table to something that can be scored, via the MLflow registry.

``resolve(entry, cfg, dataset, task)`` turns one :class:`ModelEntry` into a :class:`Resolved`:

* ``prompt``: the base model config (``model.source``) with the entry's prompt style;
* ``registered``: ``models:/<name>/<version>`` downloaded once into the model cache; a folder holding
  ``adapter_config.json`` is a LoRA adapter, one holding ``config.json`` a full checkpoint. An adapter is
  attached to the base named in the version's ``policy.json`` (what :func:`eagrl.llm.registry.log_policy`
  writes: the base it was trained on), else to ``model.source``;
* ``expert``: the registered ConCare (an MLflow PyTorch model) with the feature names it was trained on;
* ``tabular``: nothing to load (the logistic regression is fitted on the cohort when it is scored).

A model that is not registered (or lacks the asked version or alias) comes back ``skipped`` with a note
saying so; one that is registered but cannot be read comes back ``failed`` with the reason. Neither raises,
so one missing row never hides the others, and both are shown in the table and the report.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from eagrl.config import Config
from eagrl.config.evaluate import LLM_KINDS, ModelEntry
from eagrl.config.llm import ModelConfig

log = logging.getLogger(__name__)

READY, SKIPPED, FAILED = "ready", "skipped", "failed"


@dataclass
class Resolved:
    entry: ModelEntry
    status: str  # ready | skipped | failed
    note: str = ""
    uri: str | None = None  # models:/name/version of a registered model
    model_cfg: ModelConfig | None = None  # LLM entries
    adapter_digest: str = ""  # a registered LoRA policy: the digest of its adapter (eagrl.scoring.keys)
    start_digest: str = ""  # an RL policy: the digest of the adapter it started from (its registered metadata)
    expert: object | None = field(default=None, repr=False)  # the ConCare module of the expert entry
    expert_features: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def is_llm(self) -> bool:
        return self.entry.kind in LLM_KINDS


def base_model_config(cfg: Config) -> ModelConfig:
    """``model`` with its cache inside the workspace unless one is set (as the zero-shot stage does)."""
    from eagrl.workspace import model_config

    return model_config(cfg)


def registry_version(name: str, version: str, tracking_uri: str | None = None) -> tuple[str | None, str]:
    """(the version number, "") of a registered model, or (None, why not); the registry of ``tracking_uri``
    (default: the active one)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri)
    try:
        if version.startswith("@"):
            return str(client.get_model_version_by_alias(name, version[1:]).version), ""
        if version == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                return None, f"{name} is not registered in MLflow"
            return str(max(int(v.version) for v in versions)), ""
        return str(client.get_model_version(name, version).version), ""
    except MlflowException as exc:
        missing = "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower()
        if missing:
            return None, f"{name} {version} is not registered in MLflow"
        raise


def resolve(entry: ModelEntry, cfg: Config, dataset: str | None = None, task: str | None = None) -> Resolved:
    """The entry made scoreable, for a model trained on ``dataset``/``task`` (default: ``cfg.data``'s)."""
    dataset, task = dataset or cfg.data.dataset, task or cfg.data.task
    if entry.kind == "tabular":
        return Resolved(entry, READY, "logistic regression on the last values, fitted at evaluation time")
    base = base_model_config(cfg)
    if entry.kind == "prompt":
        return Resolved(entry, READY, f"base model {base.source}, {entry.style} prompt", model_cfg=base)
    name = entry.registered_name(dataset, task)
    number, why = registry_version(name, entry.version)
    if number is None:
        return Resolved(entry, SKIPPED, f"not registered: {why}")
    uri = f"models:/{name}/{number}"
    try:
        if entry.kind == "expert":
            return _expert(entry, uri)
        return _policy(entry, uri, base)
    except Exception as exc:  # noqa: BLE001 - a broken registered model is a row with the reason, not a crash
        log.warning("cannot load %s: %s", uri, exc)
        return Resolved(entry, FAILED, f"{uri} could not be loaded: {type(exc).__name__}: {exc}", uri=uri)


def _policy(entry: ModelEntry, uri: str, base: ModelConfig) -> Resolved:
    from eagrl.llm.loading import mlflow_model_dir
    from eagrl.scoring.keys import adapter_digest

    path = mlflow_model_dir(uri, base.resolved_cache_dir())
    if (Path(path) / "adapter_config.json").is_file():
        trained = _trained_base(uri, base)
        mcfg = trained.model_copy(update={"adapter": str(path), "merge_adapter": True})
        return Resolved(entry, READY, f"{uri}: LoRA adapter on {trained.source}", uri=uri, model_cfg=mcfg,
                        adapter_digest=adapter_digest(path), start_digest=_start_digest(uri, base))
    mcfg = base.model_copy(update={"source": str(path), "adapter": None, "gguf_file": None})
    return Resolved(entry, READY, f"{uri}: full checkpoint", uri=uri, model_cfg=mcfg)


def _downloaded(uri: str, base: ModelConfig, name: str) -> Path | None:
    """The shallowest file called ``name`` in the downloaded copy of ``uri`` (None: not there)."""
    root = base.resolved_cache_dir() / "mlflow" / "_".join(uri[len("models:/"):].strip("/").split("/"))
    return next(iter(sorted(root.rglob(name), key=lambda p: len(p.parts))), None)


def _start_digest(uri: str, base: ModelConfig) -> str:
    """The ``start_adapter_digest`` the RL stage wrote into the version's MLmodel metadata ("" if none)."""
    import yaml

    spec = _downloaded(uri, base, "MLmodel")
    if spec is None:
        return ""
    meta = (yaml.safe_load(spec.read_text()) or {}).get("metadata") or {}
    return str(meta.get("start_adapter_digest") or "")


def lineage(resolved: list[Resolved]) -> list[str]:
    """Say, for each RL policy in the table, which row's adapter it started from, and flag one that started from
    none of them: a paired difference against the SFT row then compares two training chains, not RL's effect."""
    by_digest = {r.adapter_digest: r for r in resolved if r.status == READY and r.adapter_digest}
    notes = []
    for r in resolved:
        if r.status != READY or not r.start_digest:
            continue
        start = by_digest.get(r.start_digest)
        if start is not None:
            r.note += f"; started from {start.entry.title} ({start.uri})"
        else:
            r.note += "; started from an adapter that is no row of this table"
            notes.append(f"{r.entry.title} ({r.uri}) started from an adapter that is no row of this table (its start "
                         f"digest {r.start_digest[:10]}): its paired differences against the SFT row compare two "
                         "training chains, not what RL did")
    return notes


def _trained_base(uri: str, base: ModelConfig) -> ModelConfig:
    """The base model named in the registered version's ``policy.json``, with this run's dtype and device."""
    import json

    spec = _downloaded(uri, base, "policy.json")
    if spec is None:
        return base
    trained = json.loads(spec.read_text()).get("model", {})
    keep = {k: trained[k] for k in ("source", "gguf_file", "trust_remote_code", "smollm2_wheel") if k in trained}
    return base.model_copy(update=keep)


def _expert(entry: ModelEntry, uri: str) -> Resolved:
    import mlflow

    info = mlflow.models.get_model_info(uri)
    features = list((info.metadata or {}).get("feature_names") or [])
    model = mlflow.pytorch.load_model(uri, map_location="cpu").eval()
    return Resolved(entry, READY, f"{uri}: ConCare", uri=uri, expert=model, expert_features=features)
