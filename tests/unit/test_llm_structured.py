"""Structured generation: any model yields a well-formed response; the mask tells writer from scaffold."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from support.llm import FEATURES, patient

from eagrl.config.llm import GenerationConfig
from eagrl.llm.backends.transformers_backend import TransformersBackend
from eagrl.llm.parse import ALL_TAGS
from eagrl.llm.prompt import build_prompt, encode
from eagrl.llm.structured import StructuredGenerator, answer_token, digit_tokens

CAPS = dict(max_subquestion_tokens=6, max_answer_tokens=6, max_features_tokens=6, max_think_tokens=8)


@pytest.fixture(scope="module")
def prompt_ids(tiny):
    _, tok = tiny
    p = build_prompt(patient(), FEATURES, dataset="tjh", task="mortality", cfg=GenerationConfig(), tokenizer=tok)
    return encode(p, tok)


def _gen(tiny, prefix_cache_tokens=100_000, **cfg):
    model, tok = tiny
    backend = TransformersBackend(model, tok, prefix_cache_tokens=prefix_cache_tokens, threads=1)
    return StructuredGenerator(backend, GenerationConfig(**{**CAPS, **cfg}), FEATURES)


@pytest.mark.parametrize("style", ["pqd", "think", "vanilla"])
@pytest.mark.parametrize("temperature", [0.0, 1.5])
def test_always_well_formed(tiny, prompt_ids, style, temperature):
    gen = _gen(tiny, prompt_style=style, temperature=temperature, depth=3)
    responses = gen.generate([prompt_ids, prompt_ids[:-7]], n=3, seed=1)
    for r in sum(responses, []):
        assert r.well_formed, (r.parsed.problems, r.text)
        assert 0.0 <= r.probability <= 1.0
        assert r.parsed.probability == r.probability
        if style == "pqd":
            assert 1 <= r.n_steps <= 3 and len(r.parsed.steps) == r.n_steps


@pytest.mark.parametrize("readout", ["digits", "yesno"])
def test_mask_separates_written_from_inserted(tiny, prompt_ids, readout):
    model, _ = tiny
    gen = _gen(tiny, temperature=1.0, depth=2, step_policy="fixed", readout=readout)
    for r in gen.generate([prompt_ids], n=4, seed=7)[0]:
        assert len(r.token_ids) == len(r.mask) == len(r.logprobs)
        dec = gen.backend.decode
        runs, cur, kind = [], [], None
        for t, m in zip(r.token_ids, r.mask):
            if kind is not None and m != kind:
                runs.append((kind, dec(cur)))
                cur = []
            cur.append(t)
            kind = m
        runs.append((kind, dec(cur)))
        inserted = "".join(text for written, text in runs if not written)
        # What the framework wrote is the scaffold: tags, newlines and the probability digits (digits readout) or
        # the likelier answer word (yes/no readout), nothing else.
        leftover = inserted
        for tag in sorted(ALL_TAGS, key=len, reverse=True):
            leftover = leftover.replace(tag, "")
        if readout == "digits":
            assert re.fullmatch(r"[\s0-9.]*", leftover), leftover
            assert inserted.count("<subquestion>") == 2 and inserted.count("<final_answer>0.") == 1
        else:
            words = {dec([answer_token(gen.backend, label)]) for label in (0, 1)}  # each word's first token
            assert leftover.strip() in words, (repr(inserted), words)
            assert inserted.count("<subquestion>") == 2 and inserted.count("<final_answer>") == 1
        # What the model wrote never contains a whole tag.
        for written, text in runs:
            if written:
                assert not any(tag in text for tag in ALL_TAGS), text
        # Every written token's log-prob is the model's, in the full context the response ends up in.
        full = torch.tensor([prompt_ids + r.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(full).logits[0].float(), -1)
        for i, (t, m, lp) in enumerate(zip(r.token_ids, r.mask, r.logprobs)):
            if m:
                assert lp == pytest.approx(float(logp[len(prompt_ids) + i - 1, t]), abs=1e-4)
            else:
                assert lp == 0.0
        # Field spans cover model-written tokens only; the features span exists.
        assert r.features_span is not None
        for _, s, e in r.spans:
            assert all(r.mask[s:e])


def test_probability_is_the_expected_digit_value(tiny, prompt_ids):
    model, _ = tiny
    gen = _gen(tiny, temperature=0.0, depth=1, readout="digits")
    (r,), = gen.generate([prompt_ids], seed=0)
    assert gen.backend.decode(r.token_ids[:r.readout_index]).endswith("<final_answer>0.")
    ids, values = digit_tokens(gen.backend)
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + r.token_ids[:r.readout_index]])).logits[0, -1].float()
    p = torch.softmax(logits[ids], -1).numpy()
    assert r.probability == pytest.approx(float(np.dot(p, values)), abs=1e-5)
    assert f"<final_answer>{r.probability:.2f}</final_answer>" in r.text


@pytest.mark.parametrize("style", ["vanilla", "pqd"])
def test_yes_no_readout_is_the_slots_word_mass(tiny, prompt_ids, style):
    """p = P(yes) / (P(yes) + P(no)) at the slot right after <final_answer>, each summed over the spellings that are
    one token, computed here from the model's own logits; the framework then writes the likelier word."""
    model, tok = tiny
    gen = _gen(tiny, prompt_style=style, readout="yesno", temperature=0.0, depth=1)
    (r,), = gen.generate([prompt_ids], seed=0)
    assert r.well_formed and 0.0 < r.probability < 1.0
    assert gen.backend.decode(r.token_ids[:r.readout_index]).endswith("<final_answer>")
    yes = sorted({tok.encode(w, add_special_tokens=False)[0] for w in ("yes", "Yes", "YES", " yes", " Yes", " YES")
                  if len(tok.encode(w, add_special_tokens=False)) == 1})
    no = sorted({tok.encode(w, add_special_tokens=False)[0] for w in ("no", "No", "NO", " no", " No", " NO")
                 if len(tok.encode(w, add_special_tokens=False)) == 1})
    assert yes and no and not set(yes) & set(no)
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + r.token_ids[:r.readout_index]])).logits[0, -1].float()
    prob = torch.softmax(logits, -1)
    expected = float(prob[yes].sum() / (prob[yes].sum() + prob[no].sum()))
    assert r.probability == pytest.approx(expected, abs=1e-5)
    word = gen.backend.decode([answer_token(gen.backend, int(expected >= 0.5))])  # "yes"/"no"'s first token
    assert r.text.endswith(f"<final_answer>{word}</final_answer>")
    assert not r.mask[r.readout_index]  # the framework wrote the word: no loss unless SFT/RL put the label there


def test_a_drawn_yes_no_answer_is_well_formed_and_model_written(tiny, prompt_ids):
    """Issue 29.1: with sample_readout the drawn word was parsed as 'no number in <final_answer>', so every response
    was malformed and every reward 0. Now each is well formed, its probability the read one (never 0 or 1)."""
    gen = _gen(tiny, readout="yesno", sample_readout=True, temperature=1.0, depth=1)
    responses = gen.generate([prompt_ids], n=6, seed=3)[0]
    for r in responses:
        assert r.well_formed, r.parsed.problems
        assert 0.0 < r.probability < 1.0
        assert r.mask[r.readout_index] and gen.backend.decode([r.token_ids[r.readout_index]]).strip().lower() in (
            "yes", "no")
    from eagrl.llm.rewards import reward

    assert all(reward(r.parsed, 1, ["hemoglobin"]).total > 0 for r in responses)


def test_sample_readout_with_greedy_decoding_is_refused(tiny):
    with pytest.raises(ValueError, match="temperature"):
        _gen(tiny, sample_readout=True, temperature=0.0)
    model, tok = tiny
    with pytest.raises(ValueError, match="greedy"):  # a copy made with model_copy skips the section's own check
        StructuredGenerator(TransformersBackend(model, tok), GenerationConfig().model_copy(
            update={"sample_readout": True, "temperature": 0.0}))


def test_prefix_reuse_and_seeds(tiny, prompt_ids):
    reuse = _gen(tiny, temperature=1.0, depth=3)
    fresh = _gen(tiny, prefix_cache_tokens=0, temperature=1.0, depth=3)
    a = reuse.generate([prompt_ids], n=3, seed=5)[0]
    b = fresh.generate([prompt_ids], n=3, seed=5)[0]
    again = reuse.generate([prompt_ids], n=3, seed=5)[0]
    for x, y, z in zip(a, b, again):
        assert x.token_ids == y.token_ids == z.token_ids and x.mask == y.mask
        np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-4)
        assert x.probability == pytest.approx(y.probability, abs=1e-5)
    other = reuse.generate([prompt_ids], n=3, seed=6)[0]
    assert [x.token_ids for x in a] != [x.token_ids for x in other]


def test_expand_and_finish_from_a_shared_prefix(tiny, prompt_ids):
    gen = _gen(tiny, temperature=1.0, depth=3)
    root = gen.start(prompt_ids, seed=0)
    children = gen.expand(root, b=3, seed=1)
    assert [c.n_steps for c in children] == [1, 1, 1] and root.ids == []
    assert len({tuple(c.ids) for c in children}) == 3
    grand = gen.expand(children[0], b=2, seed=2)
    assert all(g.ids[:len(children[0].ids)] == children[0].ids and g.n_steps == 2 for g in grand)
    done = gen.finish(grand)
    assert all(r.well_formed and r.token_ids[:len(g.ids)] == g.ids for r, g in zip(done, grand))
    assert grand[0].stage == "steps"  # finish works on copies
    forced = gen.finish(children, more_steps=False)  # the MCTS at depth T: answer now
    assert [r.n_steps for r in forced] == [1, 1, 1] and all(r.well_formed for r in forced)


def test_depth_and_step_policy(tiny, prompt_ids):
    fixed = _gen(tiny, depth=3, step_policy="fixed", temperature=1.0)
    assert [r.n_steps for r in fixed.generate([prompt_ids], n=3, seed=0)[0]] == [3, 3, 3]
    chosen = _gen(tiny, depth=4, min_steps=2, temperature=1.0)
    steps = [r.n_steps for r in chosen.generate([prompt_ids], n=6, seed=0)[0]]
    assert all(2 <= s <= 4 for s in steps)


def test_free_form_marks_everything_as_written(tiny, prompt_ids):
    gen = _gen(tiny, structured=False, max_new_tokens=12, temperature=1.0)
    (r,), = gen.generate([prompt_ids], seed=0)
    assert all(r.mask) and len(r.token_ids) <= 12
    assert r.probability == r.parsed.probability  # most likely None for a random model: that is the point


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_one_loop_writes_what_one_call_per_field_writes(tiny, prompt_ids, temperature):
    """The fused loop (each response at its own pace, tags fed beside the others' sampling, dropped tokens
    hidden) gives the same responses as one generate call per field, computing fewer token positions (no
    response waits, padded, for the slowest one at each field)."""
    calls = {}

    def counted(gen):
        model = gen.backend.model
        calls[id(gen)] = 0
        orig = model.forward

        def forward(*a, **k):
            calls[id(gen)] += k["input_ids"].numel()  # token positions computed, padding included
            return orig(*a, **k)
        gen.backend.model = type("Counted", (), {"__call__": lambda self, *a, **k: forward(*a, **k),
                                                 "parameters": model.parameters, "eval": model.eval})()
        return gen

    kw = dict(temperature=temperature, depth=3, max_subquestion_tokens=10, max_answer_tokens=10,
              max_features_tokens=10)
    fused = counted(_gen(tiny, **kw))
    lockstep = counted(_gen(tiny, fused_decoding=False, **kw))
    prompts = [prompt_ids, prompt_ids[:-9], prompt_ids[:-3]]
    a = fused.generate(prompts, n=3, seed=11)
    b = lockstep.generate(prompts, n=3, seed=11)
    for x, y in zip(sum(a, []), sum(b, [])):
        assert x.token_ids == y.token_ids and x.mask == y.mask and x.spans == y.spans and x.text == y.text
        np.testing.assert_allclose(x.logprobs, y.logprobs, atol=1e-4)
        np.testing.assert_allclose(x.entropies, y.entropies, atol=1e-4)
        assert x.probability == pytest.approx(y.probability, abs=1e-5)
    if temperature > 0:  # (greedy copies of one prompt are identical, and one call per field encodes each once)
        assert calls[id(fused)] < calls[id(lockstep)]

    # the search's partial trajectories continue the same way from the prefix store
    root_a, root_b = fused.start(prompt_ids, seed=3), lockstep.start(prompt_ids, seed=3)
    kids_a, kids_b = fused.expand(root_a, b=3, seed=4), lockstep.expand(root_b, b=3, seed=4)
    assert [k.ids for k in kids_a] == [k.ids for k in kids_b]
    done_a, done_b = fused.finish(kids_a[:2]), lockstep.finish(kids_b[:2])
    assert [r.token_ids for r in done_a] == [r.token_ids for r in done_b]


def test_the_loop_hides_tokens_a_script_drops(tiny, prompt_ids):
    """Scripts that cut sampled tokens (fed ones included) and go on with or without inserting anything get,
    from the one-loop driver, what fresh per-call encoding gives them: dropped tokens leave no trace."""
    from eagrl.llm.backends.base import SamplingParams
    from eagrl.llm.backends.script import Draw, Peek, run_lockstep

    model, tok = tiny
    params = SamplingParams(max_tokens=8, temperature=1.0, stop=("e", "a"))

    def script(ctx, seed, log):
        ids = list(ctx)
        for k in range(4):
            s = yield Draw(ids, params, seed + k)
            log.append((tuple(s.token_ids), s.finish_reason, list(s.logprobs)))
            keep = s.token_ids[:max(len(s.token_ids) - 2, 0)]  # the cut reaches tokens already fed
            ids = ids + keep + ([] if k % 2 else tok.encode(" and", add_special_tokens=False))
        log.append(((), "peek", [float(x) for x in (yield Peek(ids, (5, 6, 7)))]))

    def run(driver):
        backend = TransformersBackend(model, tok, prefix_cache_tokens=100_000, threads=1)
        logs = [[] for _ in range(4)]
        scripts = [script(prompt_ids[:len(prompt_ids) - 2 * j], 100 * j, logs[j]) for j in range(4)]
        backend.run_scripts(scripts) if driver == "loop" else run_lockstep(backend, scripts)
        return logs

    loop, per_call = run("loop"), run("per-call")
    for a, b in zip(sum(loop, []), sum(per_call, [])):
        assert a[:2] == b[:2]  # the same tokens, ended the same way
        np.testing.assert_allclose(a[2], b[2], atol=1e-4)
    assert "stop" in {entry[1] for entry in sum(loop, [])}  # fields did end inside a token's text


def test_evidence_restates_the_named_features_record_lines_right_before_the_slot(tiny, prompt_ids):
    gen = _gen(tiny, temperature=1.0, depth=2, evidence=True, readout="yesno")
    lines = gen.backend.decode(prompt_ids).splitlines()
    record = {f.name: next((x for x in lines if x.startswith(f"- {f.name}:")), None) for f in FEATURES}
    assert record["albumin"] and record["hemoglobin"] and record["eGFR"] is None  # eGFR never measured: no line
    # Names given (the search's expert ending): the lines in the order named, an unknown or unshown name skipped.
    (r,) = gen.finish([gen.start(prompt_ids, seed=3)], features=[["albumin", "eGFR", "hb", "no such lab"]])
    block = f"<evidence>\n{record['albumin']}\n{record['hemoglobin']}\n</evidence>"
    assert f"</important_features>\n{block}\n<final_answer>" in r.text, r.text
    start = len(gen.backend.encode(r.text[:r.text.index("<evidence>")]))
    assert not any(r.mask[start - 1:r.readout_index])  # the framework wrote it: SFT and RL never train on it
    assert r.well_formed and r.parsed.features[:3] == ["albumin", "eGFR", "hemoglobin"]
    # Names sampled: the block holds the lines of what the policy named, nothing else.
    for r in gen.generate([prompt_ids], n=4, seed=11)[0]:
        shown = [record[n] for n in r.parsed.known_features if record.get(n)]
        body = r.text[r.text.index("<evidence>") + len("<evidence>"):r.text.index("</evidence>")]
        assert body.strip("\n").split("\n") == (shown or [""]) and r.well_formed
    # Off: no block.
    (plain,) = _gen(tiny, temperature=1.0, depth=2).generate([prompt_ids], seed=11)[0][:1]
    assert "<evidence>" not in plain.text
