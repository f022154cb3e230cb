"""Policy adapters in the MLflow model registry, as pyfunc models that generate text.

A trained LoRA adapter is logged with :func:`log_policy` as an MLflow ``pyfunc`` model
(:class:`eagrl.llm.policy_pyfunc.PolicyModel`, logged from code): its artifacts are the
adapter folder and the :class:`~eagrl.config.llm.ModelConfig` of the base it was trained on, so
``mlflow.pyfunc.load_model("models:/eagrl-sft-tjh-mortality/1")`` gives a model whose ``predict`` takes
prompts and returns completions, and :func:`eagrl.llm.loading.load_model` with
``adapter="models:/..."`` finds the adapter folder inside it. The base weights are not copied into every
version: they are named by ``model.source`` and loaded (and cached) the usual way.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from eagrl.config.llm import GenerationConfig, ModelConfig


def log_policy(adapter_dir: str | Path, model_cfg: ModelConfig, gen_cfg: GenerationConfig, name: str,
               registered_name: str | None = None, metadata: dict | None = None):
    """Log the adapter as a pyfunc model in the active run (and register a new version); returns the model info."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "policy.json"
        base = model_cfg.model_dump(mode="json", exclude={"adapter", "merge_adapter", "cache_dir"})
        spec.write_text(json.dumps({"model": base, "generation": gen_cfg.model_dump(mode="json")}, indent=1))
        return mlflow.pyfunc.log_model(  # "models from code": the class is imported, never pickled
            name=name, python_model=str(Path(__file__).with_name("policy_pyfunc.py")),
            artifacts={"adapter": str(adapter_dir), "policy": str(spec)},
            registered_model_name=registered_name, pip_requirements=[],
            metadata={"base_model": model_cfg.source, **(metadata or {})},
        )
