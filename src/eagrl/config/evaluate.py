"""Configuration of the evaluation stage: which models form the comparison table, and the experiments run on them.

``EvaluateConfig.models`` lists the rows of the table in order. Each :class:`ModelEntry` is one of

* ``prompt``: the base model (``model.source``) prompted zero-shot in ``style`` (vanilla / think / pqd);
* ``registered``: a policy in the MLflow registry, ``registered`` being a name template filled with the
  dataset and task the model was trained on (``eagrl-eag-rl-{dataset}-{task}``; the SFT stage registers
  ``eagrl-sft-{dataset}-{task}``) and ``version`` a
  number, ``latest`` or ``@alias``; a full checkpoint or a LoRA adapter of ``model.source``;
* ``expert``: the registered ConCare expert (``eagrl-expert-{dataset}-{task}``);
* ``tabular``: logistic regression on each stay's last values (``evaluate.tabular``), fitted at evaluation time
  on the cohort's train split; no registry.

Entries that are not registered are skipped with a visible note in the table and the report, never silently.
Robustness and generalisation name LLM entries of this list (a tabular entry named there is left out with a
note). Mounted in the main config as ``evaluate``.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from eagrl.config.section import Section

Style = Literal["pqd", "vanilla", "think"]
TUNE_SPLIT = "val"  # where evaluate.tune_threshold picks each model's threshold
Group = Literal["prompting", "training", "ablation", "reference", "expert"]
LLM_KINDS = ("prompt", "registered")


class ModelEntry(Section):
    name: str = Field(..., min_length=1, description="Row name in the table, e.g. pqd, sft, eag-rl.")
    kind: Literal["prompt", "registered", "expert", "tabular"] = Field(
        ..., description="prompt: base model prompted; registered: a policy in MLflow; expert: ConCare from MLflow; "
        "tabular: logistic regression on the last values, fitted on the train split at evaluation time."
    )
    label: str = Field("", description="Human-readable row label; empty: the name.")
    group: Group = Field("training", description="Section of the table the row belongs to.")
    style: Style = Field("pqd", description="Prompt style the model is asked in (trained policies: pqd).")
    registered: str | None = Field(
        None, description="Registered model name template ({dataset}, {task} filled in); registered/expert only."
    )
    version: str = Field("latest", description='Registry version: a number, "latest" or "@alias".')

    @model_validator(mode="after")
    def _check(self) -> "ModelEntry":
        if self.kind in ("registered", "expert") and not self.registered:
            raise ValueError(f"evaluate.models entry {self.name!r} of kind {self.kind!r} needs a registered name")
        if self.kind == "tabular" and self.registered:
            raise ValueError(f"evaluate.models entry {self.name!r} of kind 'tabular' is fitted at evaluation time "
                             f"and takes no registered name (got {self.registered!r})")
        if self.registered:
            self.registered_name("dataset", "task")  # a bad placeholder fails here, quoting the template
        v = self.version
        if not (v == "latest" or v.isdigit() or (v.startswith("@") and len(v) > 1)):
            raise ValueError(f'evaluate.models entry {self.name!r}: version must be a number, "latest" or "@alias", '
                             f"got {self.version!r}")
        return self

    @property
    def title(self) -> str:
        return self.label or self.name

    def registered_name(self, dataset: str, task: str) -> str:
        assert self.registered is not None
        try:
            return self.registered.format(dataset=dataset, task=task)
        except (KeyError, IndexError) as exc:
            raise ValueError(f"evaluate.models entry {self.name!r}: registered template {self.registered!r} "
                             f"uses an unknown placeholder {exc}; only {{dataset}} and {{task}} exist") from None


def _policy(name: str, label: str, group: Group = "training") -> ModelEntry:
    return ModelEntry(name=name, kind="registered", label=label, group=group,
                      registered=f"eagrl-{name}-{{dataset}}-{{task}}")


DEFAULT_MODELS = [
    ModelEntry(name="vanilla", kind="prompt", style="vanilla", label="Vanilla (direct answer)", group="prompting"),
    ModelEntry(name="think", kind="prompt", style="think", label="Think-then-answer", group="prompting"),
    ModelEntry(name="pqd", kind="prompt", style="pqd", label="P_QD (zero-shot)", group="prompting"),
    _policy("sft", "SFT only (Stage 1)"),
    _policy("grpo", "GRPO"),
    _policy("dapo", "DAPO"),
    _policy("eag-rl", "EAG-RL"),
    _policy("eag-rl-no-stage1", "w/o Stage 1", "ablation"),
    _policy("eag-rl-no-stage2", "w/o Stage 2", "ablation"),
    _policy("eag-rl-no-ratt", "w/o R_att", "ablation"),
    _policy("eag-rl-no-adaptive-clip", "w/o eps(tau)", "ablation"),
    ModelEntry(name="direct", kind="registered", style="vanilla", group="reference",
               label="Direct fine-tune (answer slot, no reasoning)", registered="eagrl-direct-{dataset}-{task}"),
    ModelEntry(name="logreg", kind="tabular", label="Logistic regression (last values)", group="reference"),
    ModelEntry(name="expert", kind="expert", label="ConCare expert", group="expert",
               registered="eagrl-expert-{dataset}-{task}"),
]


class TabularConfig(Section):
    c: float = Field(1.0, gt=0.0, description="Inverse L2 strength C of the logistic regression (fixed, not tuned).")
    balanced: bool = Field(True, description="Weight the classes inversely to their train frequency.")
    max_iter: int = Field(1000, ge=1, description="Solver iterations at most (lbfgs).")
    tol: float = Field(
        1e-6, gt=0.0, description="Solver tolerance (lbfgs). scikit-learn's 1e-4 stops short of the optimum: on TJH's "
        "train split, inputs that differ by 2e-4 (float32 storage) stopped 4 iterations apart and moved test "
        "probabilities by 1.5e-3; at 1e-6, by 7e-6.")


class RobustnessConfig(Section):
    models: list[str] = Field(
        ["pqd", "sft", "eag-rl"], description="Entries (of evaluate.models, LLMs only) run under perturbation."
    )
    shuffle_levels: list[float] = Field(
        [0.2, 0.4, 0.6, 1.0], description="Shares of feature lines whose order is shuffled (0 is the table itself)."
    )
    noise_levels: list[float] = Field(
        [0.1, 0.3], description="Gaussian value noise, in train standard deviations of each feature."
    )
    seed: int = Field(0, description="Seed of the shuffles and of the noise.")

    @model_validator(mode="after")
    def _check(self) -> "RobustnessConfig":
        bad = [x for x in self.shuffle_levels if not 0.0 < x <= 1.0]
        if bad:
            raise ValueError(f"evaluate.robustness.shuffle_levels must lie in (0, 1], got {bad}")
        bad = [x for x in self.noise_levels if not x > 0.0]
        if bad:
            raise ValueError(f"evaluate.robustness.noise_levels must be positive, got {bad}")
        return self


class TransferTarget(Section):
    dataset: Literal["mimic-iv-demo", "tjh", "clif", "meds", "physionet2012"] = Field(
        ..., description="Dataset whose prepared cohort (<workspace>/data/cohorts) the models are scored on."
    )
    task: Literal["mortality", "readmission_30d"] | None = Field(
        None, description="Task of that cohort; None: the dataset's default (as data.task).")

    @model_validator(mode="after")
    def _default_task(self) -> "TransferTarget":
        if self.task is None:
            from eagrl.data.sources import default_task
            from eagrl.errors import DataError

            try:
                self.task = default_task(self.dataset)
            except DataError as exc:
                raise ValueError(str(exc)) from None
        return self


class GeneralisationConfig(Section):
    models: list[str] = Field(
        ["pqd", "sft", "eag-rl"],
        description="Entries (LLMs) trained on data.dataset, scored zero-shot on each target (pqd: the base model).",
    )
    targets: list[TransferTarget] = Field(
        default_factory=list, description="Other datasets' cohorts; one equal to data.dataset/task is skipped."
    )
    max_stays: int | None = Field(
        None, ge=1, description="Score at most this many stays of each target's split; None: all."
    )


class EvaluateConfig(Section):
    split: Literal["train", "val", "test"] = Field("test", description="The one split every model is scored on.")
    max_stays: int | None = Field(None, ge=1, description="Score at most this many stays of the split; None: all.")
    n_boot: int = Field(1000, ge=0, description="Bootstrap resamples of every interval (0: none).")
    ci: float = Field(0.95, gt=0.0, lt=1.0, description="Coverage of the bootstrap intervals.")
    seed: int = Field(0, description="Seed of the bootstrap resamples (shared by all models: paired) and of a capped "
                      "split's sample, which the zero-shot, SFT and RL held-out checks take too: capped alike, they "
                      "score the evaluation's stays (a smaller cap, a subset of them).")
    samples: int = Field(
        1, ge=1, description="Responses a stay for every LLM row, robustness and transfer pass included. 1: one "
        "response in generation's decoding (greedy by default). K > 1: K responses sampled at sample_temperature, "
        "the stay's probability their mean (a single response's readout moves with the text it happened to write; "
        "K times the scoring time; never reused from stage runs, which score one greedy response)."
    )
    sample_temperature: float = Field(1.0, gt=0.0, description="Sampling temperature of the K > 1 responses.")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Decision threshold of F1.")
    tune_threshold: bool = Field(
        False, description="Also report F1 at each model's own threshold: the one that maximises F1 on the val "
        "split (tune_max_stays of its stays, one more pass of each LLM), applied to the scored split as f1_tuned "
        "(with threshold_tuned); for models whose probabilities never reach evaluate.threshold."
    )
    tune_max_stays: int | None = Field(
        30, ge=1, description="Val stays the threshold is tuned on (a label-stratified sample); None: all."
    )
    n_bins: int = Field(10, ge=2, description="Equal-width probability bins of ECE and the calibration plot.")
    models: list[ModelEntry] = Field(
        default_factory=lambda: [m.model_copy() for m in DEFAULT_MODELS], description="Rows of the comparison table."
    )
    references: list[str] = Field(
        ["pqd", "sft"], description="Entries every other one is compared with by paired bootstrap."
    )
    paired_metrics: list[Literal["auroc", "auprc"]] = Field(
        ["auroc", "auprc"], description="Metrics of the paired comparisons."
    )
    reuse_predictions: bool = Field(
        True, description="Read a table row's predictions back from the zero-shot, SFT or RL stage run that scored "
        "the same model with the same settings on these stays (greedy decoding only; eagrl.scoring.keys) instead "
        "of generating them again; false: score every row afresh."
    )
    tabular: TabularConfig = Field(default_factory=TabularConfig, description="The tabular (logistic regression) rows.")
    robustness: RobustnessConfig = Field(default_factory=RobustnessConfig)
    generalisation: GeneralisationConfig = Field(default_factory=GeneralisationConfig)

    @model_validator(mode="after")
    def _check(self) -> "EvaluateConfig":
        if self.tune_threshold and self.split == TUNE_SPLIT:
            raise ValueError(f"evaluate.tune_threshold picks the threshold on the {TUNE_SPLIT} split, so it cannot "
                             f"score that split too (evaluate.split={self.split!r})")
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"evaluate.models names must be unique, got {dup} more than once")
        llm = {m.name for m in self.models if m.kind in LLM_KINDS or m.kind == "tabular"}  # tabular: left out
        for key, listed, allowed in (("references", self.references, set(names)),
                                     ("robustness.models", self.robustness.models, llm),
                                     ("generalisation.models", self.generalisation.models, llm)):
            bad = [n for n in listed if n not in allowed]
            if bad:
                raise ValueError(f"evaluate.{key} names {bad}, which are not LLM (or tabular) entries of "
                                 f"evaluate.models ({sorted(allowed)})" if key != "references" else
                                 f"evaluate.references names {bad}, not entries of evaluate.models ({names})")
        return self

    def entry(self, name: str) -> ModelEntry:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)
