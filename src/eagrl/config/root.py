"""One typed configuration object, loaded from a YAML profile and overridden from the CLI.

Profiles live in ``eagrl/profiles/{smoke,default,paper}.yaml``. Each section is a pydantic model whose
fields carry a default and a one-line description; cross-field checks raise :class:`ConfigError`
quoting the bad values. ``load_config("default", {"data.seed": 7})`` is the single entry point that the
CLI, the KFP components and the tests share.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from eagrl.config.cluster import ClusterConfig
from eagrl.config.evaluate import EvaluateConfig
from eagrl.config.expert import ExpertConfig
from eagrl.config.llm import GenerationConfig, ModelConfig
from eagrl.config.mcts import MCTSConfig
from eagrl.config.reward import ClsReward
from eagrl.config.rl import RLConfig
from eagrl.config.section import Section
from eagrl.config.serve import PromoteConfig, ServeConfig
from eagrl.config.sft import SFTConfig
from eagrl.errors import ConfigError

PROFILES = ("smoke", "default", "paper")
Dataset = Literal["mimic-iv-demo", "tjh", "clif", "meds", "physionet2012", "synthetic"]
Task = Literal["mortality", "readmission_30d"]


_Section = Section


class DataConfig(_Section):
    dataset: Dataset = Field("mimic-iv-demo", description="Which source loader reads data_path.")
    data_path: str | None = Field(
        None, description="Folder (or file) holding the source; None: the dataset's default location."
    )
    task: Task | None = Field(
        None, description="Binary outcome to predict; None: the dataset's default (tjh, physionet2012: mortality; "
        "mimic-iv-demo, clif: readmission_30d; meds: the label table's)."
    )
    seed: int = Field(42, description="Seed of the patient-level stratified split.")
    split: tuple[float, float, float] = Field((0.7, 0.1, 0.2), description="Train/val/test fractions.")
    bin: str | float | None = Field(
        None, description='Visit binning: hours per visit, "day" for calendar days; None: the source default.'
    )
    observation_hours: float | None = Field(
        None, ge=0, description="Observation window in hours; None: the source's default; 0: the whole stay."
    )
    min_visits: int = Field(2, ge=1, description="Keep stays with at least this many visits.")
    max_visits: int | None = Field(None, ge=1, description="Keep only the last max_visits visits of a stay.")
    max_stays: int | None = Field(
        None, ge=1, description="Stratified subsample to at most this many stays (smoke tests)."
    )
    norm_percentiles: tuple[float, float] = Field(
        (5.0, 95.0), description="z-score statistics from train values between these percentiles."
    )
    meds_max_features: int = Field(64, ge=1, description="MEDS: keep the most frequent numeric codes.")

    @model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) < 0:
            raise ValueError(f"data.split must be three non-negative fractions summing to 1, got {self.split}")
        lo, hi = self.norm_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"data.norm_percentiles must satisfy 0 <= low < high <= 100, got {self.norm_percentiles}")
        if self.task is None:
            from eagrl.data.sources import default_task  # the sources import this module: not at the top
            from eagrl.errors import DataError

            try:
                self.task = default_task(self.dataset, self.data_path)
            except DataError as exc:
                raise ValueError(str(exc)) from None
        if isinstance(self.bin, str) and self.bin != "day":
            try:
                self.bin = float(self.bin)
            except ValueError:
                raise ValueError(f'data.bin must be a number of hours or "day", got {self.bin!r}') from None
        return self


class ValidationConfig(_Section):
    min_positives_per_split: int = Field(2, ge=0, description="Each split needs at least this many positives.")
    time_tolerance_hours: float = Field(
        24.0, ge=0, le=8760, description="A measurement at most this long before admission or after discharge is a "
        "recording artefact (warning: ED labs before the admission, day-precision dates); farther out it is impossible."
    )
    impossible_time_max_share: float = Field(
        0.0, ge=0, le=1, description="Share of rows with an impossible time (beyond the tolerance outside the stay, "
        "a prediction time before admission, a visit at or after the prediction time) above which validation fails; "
        "at or below it, a warning. 0: any such row fails."
    )
    conflict_max_share: float = Field(
        0.1, ge=0, le=1, description="Share of measurement rows sharing (stay, time, feature) with another value "
        "above which validation fails (real data: TJH 3.4% at its day precision, MIMIC demo 1.5%, PhysioNet 0.45%)."
    )
    implausible_max_share: float = Field(
        0.1, ge=0, le=1, description="Share of a feature's values outside its physiologic range above which validation "
        "fails (real data: TJH red blood cell count 6.3%, urine counts filed under it; all others under 0.5%)."
    )
    max_examples: int = Field(5, ge=1, description="Examples of failing values quoted in messages.")


class TrackingConfig(_Section):
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow store; None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the project."
    )
    experiment: str = Field("eagrl", description="MLflow experiment name.")
    dvc: bool = Field(True, description="Version raw imports and cohorts with DVC.")
    dvc_remote: str | None = Field(
        None, description="DVC remote URL; None: the project's local remote (.dvc-storage)."
    )


class PipelineConfig(_Section):
    pipeline_root: str = Field(".kfp", description="KFP local runner's artifact root.")
    image: str = Field(
        "ghcr.io/eagrl/eagrl-pipeline:0.1.0",
        description="Image of the CPU components (docker/pipeline.Dockerfile); `make images` tags it locally.",
    )
    gpu_image: str = Field(
        "ghcr.io/eagrl/eagrl-pipeline-cuda:0.1.0",
        description="Image of the components that request GPUs in cluster.gpus (docker/pipeline-cuda.Dockerfile).",
    )
    reuse: bool = Field(
        True, description="Skip a stage whose inputs, code and outputs are unchanged since it succeeded in this --out."
    )
    lock_wait_s: float = Field(
        0.0, ge=0, description="Seconds a command waits for another process's lock on the workspace (data/, data.dvc, "
        "mlflow.db); 0: it stops at once, naming the holder (pid, command, start time)."
    )


class Config(_Section):
    profile: str = Field("default", description="Name of the profile this config came from.")
    workspace: str = Field(
        ".", description="Folder holding data/, data.dvc, the DVC remote, mlflow.db and KFP artifacts."
    )
    data: DataConfig = Field(default_factory=lambda: DataConfig())
    validation: ValidationConfig = ValidationConfig()
    tracking: TrackingConfig = TrackingConfig()
    pipeline: PipelineConfig = PipelineConfig()
    expert: "ExpertConfig" = Field(default_factory=lambda: ExpertConfig())
    model: "ModelConfig" = Field(default_factory=lambda: ModelConfig())
    generation: "GenerationConfig" = Field(default_factory=lambda: GenerationConfig())
    zeroshot: "ZeroShotConfig" = Field(default_factory=lambda: ZeroShotConfig())
    reward: "ClsReward" = Field(default_factory=lambda: ClsReward())
    mcts: "MCTSConfig" = Field(default_factory=lambda: MCTSConfig())
    sft: "SFTConfig" = Field(default_factory=lambda: SFTConfig())
    rl: "RLConfig" = Field(default_factory=lambda: RLConfig())
    evaluate: "EvaluateConfig" = Field(default_factory=lambda: EvaluateConfig())
    promote: "PromoteConfig" = Field(default_factory=lambda: PromoteConfig())
    cluster: "ClusterConfig" = Field(default_factory=lambda: ClusterConfig())
    serve: "ServeConfig" = Field(default_factory=lambda: ServeConfig())

    @model_validator(mode="after")
    def _agree(self) -> "Config":
        """Settings of two sections that must say the same thing: an error, never a silent disagreement."""
        if self.mcts.depth is not None and self.mcts.depth != self.generation.depth:
            raise ValueError(f"mcts.depth ({self.mcts.depth}) differs from generation.depth "
                             f"({self.generation.depth}): the search's prompts and SFT's would say '1 to "
                             f"{self.mcts.depth} steps' and RL's and the evaluation's '1 to {self.generation.depth}'; "
                             "set generation.depth (mcts.depth null takes it)")
        search_t = self.mcts.temperature if self.mcts.temperature is not None else self.generation.temperature
        if self.mcts.sample_readout and search_t <= 0:
            raise ValueError("mcts.sample_readout draws each rollout's answer token, but the search decodes greedily "
                             "(mcts.temperature null and generation.temperature 0): the framework would write the "
                             "answer and SFT never train it; set mcts.temperature > 0 or mcts.sample_readout false")
        if self.sft.own_text_epochs > 0 and self.generation.readout != "yesno":
            raise ValueError(f"sft.own_text_epochs ({self.sft.own_text_epochs}) trains the answer slot after the "
                             f"policy's own text, which only the yes/no readout has (generation.readout is "
                             f"{self.generation.readout!r}); set sft.own_text_epochs 0 or generation.readout yesno")
        return self

    def to_flat(self) -> dict[str, Any]:
        """Dotted keys to JSON-able values, for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, obj: Any) -> None:
            if isinstance(obj, dict):
                for k, v in obj.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = obj

        walk("", self.model_dump(mode="json"))
        return out

    def to_json(self) -> str:
        return self.model_dump_json()


class ZeroShotConfig(_Section):
    styles: list[Literal["pqd", "vanilla", "think"]] = Field(
        ["pqd"],
        description="Prompting baselines scored by the zero-shot stage (P_QD, direct answer, think-then-answer).",
    )
    split: Literal["train", "val", "test"] = Field("test", description="Which split the base model is scored on.")
    max_stays: int | None = Field(
        None, ge=1, description="Score at most this many stays (label-stratified sample); None: all."
    )
    n_boot: int = Field(1000, ge=0, description="Bootstrap resamples for the intervals.")


Config.model_rebuild()  # resolves "ZeroShotConfig", defined after Config


def profile_path(name: str) -> Path:
    return Path(__file__).parent.parent / "profiles" / f"{name}.yaml"


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {key!r}: {p!r} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"expert.hidden=64"`` -> ``("expert.hidden", 64)``; values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. data.seed=7)")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def load_config(profile: str = "default", overrides: dict[str, Any] | None = None) -> Config:
    """Load a profile by name (or a YAML path) and apply dotted-key overrides (a ``None`` value sets null)."""
    path = Path(profile) if profile.endswith((".yaml", ".yml")) else profile_path(profile)
    if not path.is_file():
        raise ConfigError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)} or a YAML file path")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"profile {path} is not valid YAML: {exc}") from None
    tree.setdefault("profile", path.stem)
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']} (got {e.get('input')!r})"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration from {path.name}: {problems}") from None


def config_from_json(text: str) -> Config:
    """Rebuild a config passed between pipeline components."""
    return Config.model_validate(json.loads(text))


def default_tracking_uri(cfg: Config) -> str:
    """MLflow's store when ``tracking.mlflow_tracking_uri`` is unset: ``$MLFLOW_TRACKING_URI``, else the workspace's
    ``mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(cfg.workspace).resolve() / 'mlflow.db'}"


def workspace_root(workspace: str | Path | None = None) -> Path:
    """The workspace rule: ``workspace``, else ``$EAGRL_WORKSPACE`` (on a cluster: the mounted volume,
    pipelines/platform.py), else the current folder; absolute, so that every process agrees."""
    return Path(workspace or os.environ.get("EAGRL_WORKSPACE") or ".").resolve()


def build_config(profile: str = "default", overrides: dict[str, Any] | None = None,
                 workspace: str | Path | None = None) -> Config:
    """The one config builder, shared by the CLI, the KFP components and the benchmarks: a profile, dotted
    overrides, and the workspace (``workspace``, else the overrides' ``workspace``, else :func:`workspace_root`'s
    rule); the MLflow store is pinned too, so that every component logs to the same one, and ``model.dtype: auto``
    is settled for this machine (the config, its fingerprints and MLflow's params then name the dtype computed in)."""
    overrides = dict(overrides or {})
    overrides["workspace"] = str(workspace_root(workspace or overrides.pop("workspace", None)))
    cfg = load_config(profile, overrides)
    if cfg.tracking.mlflow_tracking_uri is None:
        cfg.tracking.mlflow_tracking_uri = default_tracking_uri(cfg)
    if cfg.model.dtype == "auto":  # settled here, on the machine that runs the stage, so the run records it
        cfg.model.dtype = cfg.model.resolved_dtype()
    return cfg


def config_from_params(profile: str, dataset: str = "", task: str = "", data_path: str = "",
                       overrides: str = "{}", model: str = "") -> Config:
    """Rebuild the config inside a pipeline component from the pipeline's plain parameters.

    ``overrides`` is a JSON object of dotted keys (``{"data.seed": 7}``); empty strings mean "not set", so
    the KFP UI can leave them blank. ``model`` sets ``model.source``. The workspace follows :func:`build_config`.
    """
    try:
        extra = json.loads(overrides or "{}")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"pipeline parameter overrides is not a JSON object: {exc}") from None
    if not isinstance(extra, dict):
        raise ConfigError(f"pipeline parameter overrides must be a JSON object, got {type(extra).__name__}")
    given = {"data.dataset": dataset, "data.task": task, "data.data_path": data_path, "model.source": model}
    extra.update({k: v for k, v in given.items() if v})
    return build_config(profile, extra)
