"""Generation backends behind one interface, chosen by ``GenerationConfig.backend``.

``transformers``: any causal LM on CPU or GPU, batched, with KV-cache reuse of shared prefixes.
``vllm``: GPU serving engine with prefix caching (the ``gpu`` extra; imported only when chosen).
"""
from __future__ import annotations

from eagrl.config.llm import GenerationConfig, ModelConfig
from eagrl.llm.backends.base import BackendUnavailable, GenerationBackend, Sample, SamplingParams

__all__ = ["BackendUnavailable", "GenerationBackend", "Sample", "SamplingParams", "make_backend"]


def make_backend(model_cfg: ModelConfig, gen_cfg: GenerationConfig, loaded=None) -> GenerationBackend:
    """The configured backend; ``loaded`` (a :class:`~eagrl.llm.loading.LoadedModel`) reuses a model in memory."""
    if gen_cfg.backend == "vllm":
        from eagrl.llm.backends.vllm_backend import VLLMBackend, require_vllm
        from eagrl.llm.loading import load_tokenizer, model_dir

        require_vllm()  # fail before resolving or converting any model
        path = model_dir(model_cfg)
        return VLLMBackend(
            path, load_tokenizer(model_cfg, path), dtype=model_cfg.resolved_dtype(), seed=gen_cfg.seed,
            gpu_memory_utilization=gen_cfg.vllm_gpu_memory_utilization, max_model_len=gen_cfg.vllm_max_model_len,
            adapter=model_cfg.adapter, lora_rank=model_cfg.lora_r,
        )
    from eagrl.llm.backends.transformers_backend import TransformersBackend
    from eagrl.llm.loading import load_model

    loaded = loaded or load_model(model_cfg)
    return TransformersBackend(loaded.model, loaded.tokenizer, batch_size=gen_cfg.batch_size,
                               prefix_cache_tokens=gen_cfg.prefix_cache_tokens, threads=gen_cfg.cpu_threads)
