"""Constrained <important_features>: only the cohort's names, '; '-separated, 1..max_features of them."""
from __future__ import annotations

import re

import pytest
from support.llm import FEATURES, patient

from eagrl.config.llm import GenerationConfig
from eagrl.llm.backends.transformers_backend import TransformersBackend
from eagrl.llm.choice import NameList
from eagrl.llm.prompt import build_prompt, encode
from eagrl.llm.structured import StructuredGenerator

NAMES = ["Lactate dehydrogenase", "Lactate", "age", "(%)lymphocyte", "Hypersensitive c-reactive protein"]


@pytest.fixture(scope="module")
def backend(tiny):
    model, tok = tiny
    return TransformersBackend(model, tok, prefix_cache_tokens=100_000, threads=1)


def _walk(names: NameList, ids: list[int]) -> bool:
    """Whether every token of ids is allowed after its prefix."""
    return all(tok in names.allowed(ids[:i]) for i, tok in enumerate(ids))


def test_allowed_tokens_spell_exactly_the_listed_names(backend):
    nl = NameList.build(NAMES, backend.encode, end=999_999, max_items=2)
    assert _walk(nl, backend.encode("Lactate; age"))
    assert _walk(nl, backend.encode("Lactate dehydrogenase; (%)lymphocyte"))  # a name that extends another
    assert not _walk(nl, backend.encode("Lactose"))
    assert not _walk(nl, backend.encode("feature name"))
    assert 999_999 not in nl.allowed([])  # at least one name
    done = backend.encode("Lactate")
    assert 999_999 in nl.allowed(done)  # a whole name may close the field ...
    assert set(nl.allowed(done)) > {999_999}  # ... or continue (a longer name, or the separator)
    two = backend.encode("age; Lactate dehydrogenase")
    assert nl.allowed(two) == [999_999]  # max_items reached and no longer name: only the end remains


def test_regex_accepts_the_same_language():
    nl = NameList(tuple(NAMES), (), (), 0, 3)
    rx = re.compile(nl.regex())
    assert rx.fullmatch("Lactate dehydrogenase; age; (%)lymphocyte")
    assert not rx.fullmatch("age; age; age; age")  # more than max_items
    assert not rx.fullmatch("feature name")


@pytest.mark.parametrize("temperature", [0.0, 1.5])
def test_a_random_model_only_names_cohort_features(tiny, backend, temperature):
    _, tok = tiny
    cfg = GenerationConfig(max_subquestion_tokens=6, max_answer_tokens=6, max_features_tokens=24,
                           temperature=temperature, max_features=3)
    gen = StructuredGenerator(backend, cfg, FEATURES)
    prompt = encode(build_prompt(patient(), FEATURES, dataset="tjh", task="mortality", cfg=cfg, tokenizer=tok), tok)
    responses = gen.generate([prompt], n=6, seed=3)[0]
    names = {f.name for f in FEATURES}
    for r in responses:
        m = re.search(r"<important_features>(.*?)</important_features>", r.text, re.S)
        assert m, r.text
        items = m.group(1).split("; ")
        assert 1 <= len(items) <= 3 and set(items) <= names, items
        assert set(r.parsed.features) == set(items) and not r.parsed.unknown_features
        s, e = r.features_span  # the names are model-written tokens (trained on), not scaffold
        assert all(r.mask[s:e])


def test_unconstrained_when_switched_off(tiny, backend):
    _, tok = tiny
    cfg = GenerationConfig(max_subquestion_tokens=6, max_answer_tokens=6, max_features_tokens=12,
                           temperature=1.5, features_choice=False)
    gen = StructuredGenerator(backend, cfg, FEATURES)
    prompt = encode(build_prompt(patient(), FEATURES, dataset="tjh", task="mortality", cfg=cfg, tokenizer=tok), tok)
    texts = [re.search(r"<important_features>(.*?)</important_features>", r.text, re.S).group(1)
             for r in gen.generate([prompt], n=6, seed=3)[0]]
    names = {f.name for f in FEATURES}
    assert any(not set(t.split("; ")) <= names for t in texts)  # a random model left free writes other text


def test_sampled_readout_is_a_model_written_token(tiny, backend):
    _, tok = tiny
    cfg = GenerationConfig(max_subquestion_tokens=4, max_answer_tokens=4, max_features_tokens=8, temperature=1.5,
                           sample_readout=True)
    gen = StructuredGenerator(backend, cfg, FEATURES)
    prompt = encode(build_prompt(patient(), FEATURES, dataset="tjh", task="mortality", cfg=cfg, tokenizer=tok), tok)
    responses = gen.generate([prompt], n=8, seed=11)[0]
    for r in responses:
        i = r.readout_index
        assert r.mask[i] and r.logprobs[i] < 0  # trained on by SFT/RL, with the model's log-probability
        assert not any(r.mask[i + 1:])  # the closing tag is scaffold
        assert r.text.endswith("</final_answer>") and r.well_formed
    assert len({r.probability for r in responses}) > 1  # drawn, not the same expectation every time
    again = gen.generate([prompt], n=8, seed=11)[0]
    assert [r.probability for r in again] == [r.probability for r in responses]  # seeded
