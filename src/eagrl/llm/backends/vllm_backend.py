"""Generation with vLLM on a GPU (the ``gpu`` extra), prefix caching on.

vLLM is imported inside the class, so the package imports and the CPU path run without it. Prefix caching
(``enable_prefix_caching=True``) plays the part the KV-cache store plays in the transformers backend: the
patient prompt and every shared partial trajectory are computed once across requests.

Differences from :class:`TransformersBackend`, all within the interface's conventions: seeds are per
request (``SamplingParams.seed``), so samples are reproducible but not the same streams as on CPU; and
``next_token_logprobs`` scores each candidate as a one-token continuation through ``prompt_logprobs=0``,
which returns the log-prob of the actual prompt token under the full distribution.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from eagrl.llm.backends.base import BackendUnavailable, GenerationBackend, Sample, SamplingParams, seeds_for


def require_vllm():
    """The vllm module, or a :class:`BackendUnavailable` that says how to get it."""
    try:
        import vllm
    except ImportError:
        raise BackendUnavailable(
            "generation.backend='vllm' needs vLLM, which is not installed: install the GPU extra "
            "(pip install 'eagrl[gpu]') on a CUDA machine, or set generation.backend=transformers"
        ) from None
    return vllm


class VLLMBackend(GenerationBackend):
    def __init__(self, model_path: str, tokenizer, *, dtype: str = "bfloat16", seed: int = 0,
                 gpu_memory_utilization: float = 0.85, max_model_len: int | None = None,
                 adapter: str | None = None, lora_rank: int = 16):
        vllm = require_vllm()
        self._vllm = vllm
        self.tokenizer = tokenizer
        kwargs = dict(model=model_path, tokenizer=model_path, dtype=dtype, seed=seed, enable_prefix_caching=True,
                      gpu_memory_utilization=gpu_memory_utilization)
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self._lora = None
        if adapter:
            from vllm.lora.request import LoRARequest

            kwargs.update(enable_lora=True, max_lora_rank=lora_rank)
            self._lora = LoRARequest("adapter", 1, adapter)
        self.llm = vllm.LLM(**kwargs)

    @classmethod
    def from_llm(cls, llm, tokenizer) -> "VLLMBackend":
        """Wrap an engine someone else owns (TRL's colocated vLLM during RL, whose weights TRL keeps in sync)."""
        self = cls.__new__(cls)
        self._vllm, self.tokenizer, self.llm, self._lora = require_vllm(), tokenizer, llm, None
        return self

    def _params(self, params: SamplingParams, n: int, seed: int):
        stop_ids = sorted(self.special_token_ids()) if params.stop_on_special else []
        guided = _guided(self._vllm, params.names.regex()) if params.names is not None else {}
        return self._vllm.SamplingParams(**guided,
            n=n, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or -1,
            max_tokens=params.max_tokens, stop=list(params.stop) or None,
            stop_token_ids=sorted(set(stop_ids) | set(params.extra_stop_ids)) or None,
            seed=seed, logprobs=0, include_stop_str_in_output=False, ignore_eos=params.ignore_eos,
        )

    def generate(self, prompts, params: SamplingParams, *, n: int = 1, seed=0) -> list[list[Sample]]:
        seeds = seeds_for(prompts, seed)
        requests = [{"prompt_token_ids": list(map(int, p))} for p in prompts]
        sps = [self._params(params, n, s) for s in seeds]
        outs = self.llm.generate(requests, sps, use_tqdm=False, lora_request=self._lora)
        result = []
        for ro in outs:
            samples = []
            for o in ro.outputs:
                ids = list(o.token_ids)
                lps = [float(d[t].logprob) for t, d in zip(ids, o.logprobs or [])] if o.logprobs else []
                if o.finish_reason == "length":
                    reason, stop = "length", None
                elif isinstance(o.stop_reason, str):
                    reason, stop = "stop", o.stop_reason
                else:  # an EOS or stop token id (None: the model's own EOS)
                    reason, stop = "eos", None
                samples.append(Sample(o.text, ids, lps, reason, stop))
            result.append(samples)
        return result

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], candidates: Sequence[int]) -> np.ndarray:
        cands = [int(c) for c in candidates]
        requests = [{"prompt_token_ids": [*map(int, p), c]} for p in prompts for c in cands]
        sp = self._vllm.SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0)
        outs = self.llm.generate(requests, sp, use_tqdm=False, lora_request=self._lora)
        vals = [float(ro.prompt_logprobs[-1][c].logprob) for ro, c in zip(outs, cands * len(prompts))]
        return np.asarray(vals, dtype=np.float64).reshape(len(prompts), len(cands))


def _guided(vllm, regex: str) -> dict:
    """The name-list constraint as vLLM guided decoding (``structured_outputs`` from 0.10.2, ``guided_decoding``
    before)."""
    sp = vllm.sampling_params
    if hasattr(sp, "StructuredOutputsParams"):
        return {"structured_outputs": sp.StructuredOutputsParams(regex=regex)}
    return {"guided_decoding": sp.GuidedDecodingParams(regex=regex)}
