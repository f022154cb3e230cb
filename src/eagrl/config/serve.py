"""Configuration of ``eagrl serve``: what is served, how requests are batched, limited and authenticated."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from eagrl.config.section import Section


class ServeConfig(Section):
    model_name: str = Field("eagrl-policy", description="Name on the routes (/v1/models/<name>, OpenAI 'model').")
    backend: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="auto: vllm when it is installed and a GPU is present, else transformers."
    )
    host: str = Field("127.0.0.1", description="Address to bind (0.0.0.0 in a container).")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port.")
    # ---------------------------------------------------------------- the clinical route
    dataset: str = Field("tjh", description="Whose feature specs and prompt domain the clinical route uses.")
    task: str = Field("mortality", description="The outcome the clinical route asks the model about.")
    features_file: str | None = Field(
        None, description="A prepared cohort's features.json (exact feature order); None: the dataset's specs."
    )
    max_visits: int = Field(64, ge=1, description="Most visits accepted in one patient record.")
    # ---------------------------------------------------------------- batching
    max_batch_size: int = Field(8, ge=1, description="Most requests decoded together (1: one at a time).")
    max_wait_ms: float = Field(10.0, ge=0, description="How long a batch waits to fill after its first request.")
    # ---------------------------------------------------------------- limits
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Larger request bodies get 413.")
    max_prompt_tokens: int = Field(4096, ge=16, description="Longer completion prompts get 400.")
    max_tokens: int = Field(512, ge=1, description="Cap on max_tokens of an OpenAI request.")
    max_n: int = Field(4, ge=1, description="Cap on n (completions per prompt) of an OpenAI request.")
    request_timeout_s: float = Field(120.0, gt=0, description="A request not answered by then gets 504.")
    # ---------------------------------------------------------------- auth
    api_key_env: str = Field(
        "EAGRL_API_KEY", description="Environment variable holding the API key; set and non-empty: key required."
    )

    @model_validator(mode="after")
    def _check(self) -> "ServeConfig":
        if not self.model_name or "/" in self.model_name:
            raise ValueError(f"serve.model_name must be a non-empty name without '/', got {self.model_name!r}")
        return self


class PromoteConfig(Section):
    """The pipeline's last step: which registered model is served, and when its ``champion`` alias moves.

    Mounted in the main config as ``promote``. The candidate is the policy the RL stage registered, judged on
    the evaluation stage's predictions for it (the same test stays every earlier candidate was judged on): it
    must clear the floor (better than chance, not worse than the zero-shot base model), then beat the champion.
    """

    registered_name: str = Field(
        "eagrl-policy", description="The served model (models:/<name>@<alias>); each candidate becomes a version."
    )
    alias: str = Field("champion", description="The alias the serving InferenceService loads.")
    entry: str | None = Field(
        None, description="evaluate.models entry whose test predictions decide; None: the row of rl.variant."
    )
    min_improvement: float = Field(
        0.0, ge=0.0, description="The paired-bootstrap interval of the AUROC gain must lie above this to promote."
    )
    # ---------------------------------------------------------------- the floor every candidate must clear
    min_auroc_low: float = Field(
        0.5, ge=0.5, lt=1.0, description="Floor: the lower bound of the candidate's test-AUROC interval must lie "
        "above this (0.5: better than chance), first candidate or not."
    )
    baseline_entry: str = Field(
        "pqd", min_length=1, description="Floor: the evaluate.models entry of the zero-shot base model the "
        "candidate is paired with on the same test stays."
    )
    min_gain_over_baseline: float = Field(
        0.0, ge=0.0, description="Floor: the candidate's paired AUROC difference against that base model must not "
        "be below this."
    )
    min_overlap: float = Field(
        0.9, gt=0.0, le=1.0, description="Share of test stays two candidates must share to be compared at all."
    )
    n_boot: int = Field(1000, ge=100, description="Paired-bootstrap resamples of the AUROC difference.")
    ci: float = Field(0.95, gt=0.0, lt=1.0, description="Coverage of that interval.")
    seed: int = Field(0, description="Seed of the resamples.")

    @model_validator(mode="after")
    def _check(self) -> "PromoteConfig":
        for key in ("registered_name", "alias"):
            value = getattr(self, key)
            if not value or "/" in value or "@" in value:
                raise ValueError(f"promote.{key} must be a non-empty name without '/' or '@', got {value!r}")
        return self
