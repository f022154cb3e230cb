"""The workspace: the one place that names its folders and the models its stages register.

A workspace is a folder holding ``data/`` (versioned by DVC: ``raw/<dataset>``, ``cohorts/<dataset>-<task>``,
``expert/<dataset>-<task>``, ``trajectories/<dataset>-<task>/<mode>-<digest>``), ``data.dvc`` and ``mlflow.db``.
Every stage reads another stage's output through these paths, never by importing that stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path
    dataset: str
    task: str

    @classmethod
    def of(cls, cfg) -> "Workspace":
        """The workspace of a :class:`~eagrl.config.Config` (its ``workspace``, ``data.dataset`` and ``data.task``)."""
        return cls(Path(cfg.workspace).resolve(), cfg.data.dataset, cfg.data.task)

    @property
    def name(self) -> str:
        """``<dataset>-<task>``: the folder name of this cohort's data and the tail of every registered name."""
        return f"{self.dataset}-{self.task}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def raw_dir(self, dataset: str | None = None) -> Path:
        return self.data_dir / "raw" / (dataset or self.dataset)

    @property
    def cohort_dir(self) -> Path:
        return self.data_dir / "cohorts" / self.name

    @property
    def expert_dir(self) -> Path:
        return self.data_dir / "expert" / self.name

    @property
    def attention_path(self) -> Path:
        """The expert's C_exp table (what guides the search and rewards R_att)."""
        return self.expert_dir / "attention.parquet"

    @property
    def trajectories_dir(self) -> Path:
        """The parent of every search store of this cohort (one subfolder per settings, cohort and C_exp digest)."""
        return self.data_dir / "trajectories" / self.name

    @property
    def model_cache_dir(self) -> Path:
        """Where a converted model (SmolLM2's GGUF as safetensors) is kept unless ``model.cache_dir`` names a place."""
        return self.root / ".cache" / "models"

    @property
    def checkouts_dir(self) -> Path:
        return self.root / "checkouts"

    def registered_name(self, stage: str) -> str:
        """The MLflow registered model a stage logs to: ``eagrl-<stage>-<dataset>-<task>`` (stage: expert, sft,
        direct, or an RL variant such as eag-rl or grpo)."""
        return f"eagrl-{stage}-{self.name}"


def model_config(cfg):
    """The config's model section with its cache inside the workspace unless one is set (every stage loads the
    model through this)."""
    if cfg.model.cache_dir:
        return cfg.model
    return cfg.model.model_copy(update={"cache_dir": str(Workspace.of(cfg).model_cache_dir)})


def workspace_inputs(cfg, out_dir, given: dict) -> dict:
    """A stage contract's ``resolve`` for the inputs every stage finds in the workspace: ``cohort_path`` and
    ``attention_path``, each the workspace's own where the caller passed None (only those the stage takes)."""
    ws = Workspace.of(cfg)
    defaults = {"cohort_path": ws.cohort_dir, "attention_path": ws.attention_path}
    return {k: Path(given[k] or default) for k, default in defaults.items() if k in given}
