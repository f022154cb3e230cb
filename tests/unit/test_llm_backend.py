"""Transformers backend: prefix reuse changes nothing but speed; seeds; stops; next-token log-probs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eagrl.config.llm import GenerationConfig, ModelConfig
from eagrl.llm.backends import BackendUnavailable, SamplingParams, make_backend
from eagrl.llm.backends.transformers_backend import TransformersBackend

PROMPT = "Patient: sex male, age 73 years.\n- hemoglobin (unit: g/L; reference range: 120-175): [136, NaN, 140]\n"


def _backends(tiny):
    model, tok = tiny
    reuse = TransformersBackend(model, tok, prefix_cache_tokens=100_000, threads=1)
    return reuse, TransformersBackend(model, tok, prefix_cache_tokens=0, threads=1)


def _same(a, b, atol=1e-4):
    for x, y in zip(sum(a, []), sum(b, [])):
        assert x.token_ids == y.token_ids
        assert x.text == y.text
        np.testing.assert_allclose(x.logprobs, y.logprobs, atol=atol)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_prefix_reuse_equals_reencoding(tiny, temperature):
    reuse, fresh = _backends(tiny)
    ids = reuse.encode(PROMPT)
    prompts = [ids, ids[:-5]]
    params = SamplingParams(max_tokens=24, temperature=temperature)
    first = reuse.generate(prompts, params, n=4, seed=3)
    _same(first, fresh.generate(prompts, params, n=4, seed=3))
    assert reuse.store.hits > 0
    # continue every sample (the structured generator's pattern): served from the stored rows
    conts = [ids + s.token_ids + reuse.encode("</answer>") for s in first[0]]
    hits = reuse.store.hits
    _same(reuse.generate(conts, params, seed=[1, 2, 3, 4]), fresh.generate(conts, params, seed=[1, 2, 3, 4]))
    assert reuse.store.hits - hits >= sum(len(c) for c in conts) - 4 * 8


def test_seeds_reproducible_and_batch_independent(tiny):
    reuse, _ = _backends(tiny)
    ids = reuse.encode(PROMPT)
    params = SamplingParams(max_tokens=16, temperature=1.0)
    a = reuse.generate([ids], params, n=3, seed=[11])[0]  # one seed per prompt
    b = reuse.generate([ids], params, n=3, seed=[11])[0]
    assert [s.token_ids for s in a] == [s.token_ids for s in b]
    c = reuse.generate([ids], params, n=3, seed=[12])[0]
    assert [s.token_ids for s in a] != [s.token_ids for s in c]
    # the same prompt and seed give the same sample whatever else is in the batch
    other = reuse.encode("something else entirely")
    mixed = reuse.generate([other, ids], params, n=3, seed=[5, 11])
    assert [s.token_ids for s in mixed[1]] == [s.token_ids for s in a]


def test_logprobs_match_a_plain_forward(tiny):
    model, tok = tiny
    be = TransformersBackend(model, tok, threads=1)
    ids = be.encode(PROMPT)
    (s,), = be.generate([ids], SamplingParams(max_tokens=10, temperature=1.0), seed=0)
    full = torch.tensor([ids + s.token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(full).logits[0].float(), -1)
    expect = [float(logp[len(ids) - 1 + i, t]) for i, t in enumerate(s.token_ids)]
    np.testing.assert_allclose(s.logprobs, expect, atol=1e-4)
    nxt = be.next_token_logprobs([ids], [5, 17, 300])
    np.testing.assert_allclose(nxt[0], logp[len(ids) - 1, [5, 17, 300]].numpy(), atol=1e-4)


def test_stop_strings_and_eos(tiny):
    model, tok = tiny
    be = TransformersBackend(model, tok, threads=1)
    ids = be.encode(PROMPT)
    free = be.generate([ids], SamplingParams(max_tokens=30, temperature=0.0))[0][0]
    assert free.finish_reason == "length" and len(free.token_ids) == 30
    stop = free.text[5:8]  # a stop string the greedy text is known to contain
    cut = be.generate([ids], SamplingParams(max_tokens=30, temperature=0.0, stop=(stop,)))[0][0]
    assert cut.finish_reason == "stop" and cut.stop == stop
    assert cut.text == free.text[:free.text.index(stop)]
    assert be.decode(cut.token_ids).startswith(cut.text) and stop in be.decode(cut.token_ids)
    first = free.token_ids[0]
    eos = be.generate([ids], SamplingParams(max_tokens=30, temperature=0.0, extra_stop_ids=(first,)))[0][0]
    assert eos.finish_reason == "eos" and eos.token_ids == [first] and eos.text == ""


def test_factory(tiny):
    be = make_backend(ModelConfig(source="tiny"), GenerationConfig(batch_size=3, prefix_cache_tokens=99))
    assert isinstance(be, TransformersBackend) and be.batch_size == 3 and be.store.capacity == 99


def test_vllm_without_vllm_is_a_clear_error():
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    with pytest.raises(BackendUnavailable, match="pip install 'eagrl\\[gpu\\]'"):
        make_backend(ModelConfig(source="tiny"), GenerationConfig(backend="vllm"))
