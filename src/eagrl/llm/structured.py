"""Structured generation: the framework writes the scaffold, the model fills the fields.

For a P_QD response the framework writes each opening tag; the model writes the field until its closing tag
(a stop string: any tag ends a field), an end token, or the field's token cap; the framework closes the tag
where the model did not. After each step the framework decides whether another step follows: always up to
depth T (``step_policy="fixed"``), or by the model's own choice between ``<subquestion>`` and
``<important_features>`` read from its next-token distribution (``"model"``, default; at least
``min_steps``, at most T). Then the model fills ``<important_features>``; with ``cfg.evidence`` the framework
restates the named features' record lines from the prompt in ``<evidence>``; it writes
``<final_answer>0.`` and reads the probability from the next-token distribution:

* ``readout="digits"`` (default): the expected value over every token that is a run of digits d, each read
  as the number 0.d plus half its last decimal place (so "8" means 0.85 and "83" means 0.835), renormalised
  over those tokens. It lies in [0.05, 0.95] for single-digit vocabularies, is continuous and always defined.
* ``readout="yesno"``: P(yes) / (P(yes) + P(no)) over the yes/no word tokens right after ``<final_answer>``.

The framework then writes the probability with two decimals and closes the tag. Every response therefore
parses as well formed, whatever the model. Vanilla (``<final_answer>`` only) and think-then-answer
(``<think>`` then ``<final_answer>``) are the same routine with fewer fields.

A :class:`Response` carries the token ids of the response, a mask (True where the model wrote the token,
False where the framework inserted it: SFT and RL losses use only the True ones), the model's log-prob of
each token, the entropy of the model's distribution at each model-written token (where the backend reports it), the
token span of each field (the RL entropy term reads the important-features span), and the
parsed result. :meth:`StructuredGenerator.add_step` and :meth:`finish` continue partial trajectories, so
the MCTS expands and rolls out from shared prefixes; the backend's prefix reuse keeps those cheap.

Where a token the model wrote runs past the end of its field (it carries part of a tag, or text after it),
that token is dropped and the missing characters are inserted by the framework, so the response text
is always exactly ``field + closing tag``; the characters of the field in that last token, if any, count
as inserted.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from eagrl.config.llm import GenerationConfig
from eagrl.llm.backends.base import GenerationBackend, SamplingParams, sample_seed, seeds_for
from eagrl.llm.backends.script import Draw, Peek, run_lockstep
from eagrl.llm.parse import (
    ALL_TAGS,
    ANSWER,
    EVIDENCE,
    FEATURES,
    FINAL,
    NO_NUMBER,
    SUBQ,
    THINK,
    FeatureMatcher,
    ParsedResponse,
    parse_response,
    split_feature_list,
)

STEPS, FEATURES_STAGE, ANSWER_STAGE, DONE = "steps", "features", "answer", "done"


def evidence_lines(prompt_text: str, names: Sequence[str]) -> list[str]:
    """The record line of each named feature in the prompt (``- Name: ...`` compact, ``- Name (unit: ...`` full), in
    the order named; a name whose line the prompt does not hold (dropped by the token budget) has none."""
    lines = prompt_text.splitlines()
    found = (next((line for line in lines if line.startswith((f"- {name}:", f"- {name} ("))), None) for name in names)
    return [line for line in found if line is not None]


def evidence_block(prompt_text: str, names: Sequence[str]) -> str:
    """``<evidence>`` holding the named features' record lines, one a line (empty when none is in the prompt)."""
    return f"<{EVIDENCE}>" + "".join("\n" + line for line in evidence_lines(prompt_text, names)) + f"\n</{EVIDENCE}>"


@dataclass
class Trajectory:
    """A response being written: its tokens, who wrote each one, and where the writing stands."""

    prompt_ids: list[int]
    seed: int
    ids: list[int] = field(default_factory=list)
    mask: list[bool] = field(default_factory=list)  # True: model-written
    logprobs: list[float] = field(default_factory=list)  # model log-prob (0.0 where inserted)
    entropies: list[float] = field(default_factory=list)  # entropy at each token (NaN: inserted or not reported)
    spans: list[tuple[str, int, int]] = field(default_factory=list)  # (field, start, end) of model text
    n_steps: int = 0
    stage: str = STEPS
    open_tag: str | None = None  # a tag the framework has just written, awaiting its field
    probability: float | None = None
    readout_index: int | None = None  # index in ids where the probability was read

    def child(self, seed: int) -> "Trajectory":
        t = copy.copy(self)
        t.ids, t.mask, t.logprobs, t.spans = list(self.ids), list(self.mask), list(self.logprobs), list(self.spans)
        t.entropies = list(self.entropies)
        t.seed = seed
        return t

    @property
    def context(self) -> list[int]:
        return self.prompt_ids + self.ids


@dataclass
class Response:
    text: str  # the response alone (the prompt is prompt_ids)
    token_ids: list[int]
    mask: list[bool]
    logprobs: list[float]
    spans: list[tuple[str, int, int]]
    parsed: ParsedResponse
    probability: float | None
    readout_index: int | None = None
    n_steps: int = 0
    prompt_ids: list[int] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)  # per token; NaN where inserted or not reported

    @property
    def well_formed(self) -> bool:
        return self.parsed.well_formed

    @property
    def features_span(self) -> tuple[int, int] | None:
        return next(((s, e) for f, s, e in self.spans if f == FEATURES), None)


class StructuredGenerator:
    """Write responses in the configured style with any :class:`GenerationBackend`."""

    def __init__(self, backend: GenerationBackend, cfg: GenerationConfig | None = None,
                 features: Sequence | FeatureMatcher = ()):
        self.backend = backend
        self.cfg = cfg or GenerationConfig()
        if self.cfg.sample_readout and self.cfg.temperature <= 0:  # model_copy skips the section's own check
            raise ValueError("sample_readout draws the answer token at the sampling temperature, but the "
                             "temperature is 0 (greedy): the framework would write the answer and SFT never train it")
        self.matcher = features if isinstance(features, FeatureMatcher) else FeatureMatcher(features)
        self._params_cache: dict[tuple[str, int], SamplingParams] = {}

    # ================================================================== public API
    def generate(self, prompts: Sequence[Sequence[int]], n: int = 1,
                 seed: int | Sequence[int] = 0) -> list[list[Response]]:
        """``n`` responses to each prompt (free-form when ``cfg.structured`` is False)."""
        if not self.cfg.structured:
            return self._free_form(prompts, n, seed)
        starts = [self.start(p, sample_seed(s, j)) for p, s in zip(prompts, seeds_for(prompts, seed)) for j in range(n)]
        done = self.finish(starts)
        return [done[i * n:(i + 1) * n] for i in range(len(prompts))]

    def start(self, prompt_ids: Sequence[int], seed: int = 0) -> Trajectory:
        return Trajectory(list(map(int, prompt_ids)), int(seed))

    def expand(self, traj: Trajectory, b: int, seed: int = 0) -> list[Trajectory]:
        """``b`` children of a partial trajectory, each one (sub-question, answer) step longer (MCTS expansion)."""
        return self.add_step([traj.child(sample_seed(seed, j)) for j in range(b)])

    def add_step(self, trajs: Sequence[Trajectory]) -> list[Trajectory]:
        """Copies of the trajectories, each with one more step (those at depth T are returned unchanged)."""
        out = [t.child(t.seed) for t in trajs]
        self._run([self._step(t) for t in out if t.stage == STEPS and t.n_steps < self.cfg.depth])
        return out

    def finish(self, trajs: Sequence[Trajectory], more_steps: bool = True,
               features: Sequence[Sequence[str]] | None = None) -> list[Response]:
        """Complete copies of the trajectories: further steps (per the step policy, unless ``more_steps`` is
        False), then the important features and the probability. ``features`` (one list of names a trajectory):
        the framework writes those names as the important features instead of sampling them, marked as the
        policy's own text (SFT trains on them), and reads the probability after them."""
        out = [t.child(t.seed) for t in trajs]
        names = list(features) if features is not None else [None] * len(out)
        if len(names) != len(out):
            raise ValueError(f"finish: {len(names)} feature lists for {len(out)} trajectories")
        self._run([self._finish(t, more_steps, n) for t, n in zip(out, names)])
        return [self._response(t) for t in out]

    def write_steps(self, trajs: Sequence[Trajectory], more_steps: bool = True) -> list[Trajectory]:
        """Copies of the P_QD trajectories with their steps written (per the step policy, unless ``more_steps`` is
        False), stopped where the important features begin: :meth:`finish` completes each copy of one, so two
        endings (sampled features, given features) share the same reasoning."""
        if self.cfg.prompt_style != "pqd":
            raise ValueError(f"write_steps writes (sub-question, answer) steps: the prompt style must be 'pqd', "
                             f"got {self.cfg.prompt_style!r}")
        out = [t.child(t.seed) for t in trajs]
        self._run([self._steps(t, more_steps) for t in out])
        return out

    def _run(self, scripts: list) -> None:
        """Run one writing script per trajectory (``eagrl.llm.backends.script``) on the backend's driver."""
        if not scripts:
            return
        drive = getattr(self.backend, "run_scripts", None)
        if drive is not None and self.cfg.fused_decoding:
            drive(scripts)
        else:
            run_lockstep(self.backend, scripts)

    # ================================================================== the writing scripts
    def _finish(self, t: Trajectory, more_steps: bool, names: Sequence[str] | None = None):
        style = self.cfg.prompt_style
        if style == "pqd":
            yield from self._steps(t, more_steps)
            if t.stage == FEATURES_STAGE:
                if names is None:
                    yield from self._fill(t, FEATURES, self.cfg.max_features_tokens, sep="\n")
                else:
                    self._write(t, FEATURES, "; ".join(names), sep="\n")
                if self.cfg.evidence:
                    self._evidence(t)
                yield from self._answer(t, sep="\n")
        elif style == "think":
            if t.stage == STEPS:
                yield from self._fill(t, THINK, self.cfg.max_think_tokens, sep="")
            if t.stage != DONE:
                yield from self._answer(t, sep="\n")
        elif t.stage != DONE:  # vanilla: the probability only
            yield from self._answer(t, sep="")

    def _steps(self, t: Trajectory, more_steps: bool):
        """Write steps until the step policy (or depth T, or ``more_steps`` False) moves on to the features."""
        while t.stage == STEPS:
            if t.n_steps < self.cfg.min_steps:
                go = True
            elif t.n_steps >= self.cfg.depth or not more_steps:
                go = False
            elif self.cfg.step_policy == "fixed":
                go = True
            else:
                go = yield from self._decide(t)
            if not go:
                t.stage = FEATURES_STAGE
                break
            yield from self._step(t)

    def _step(self, t: Trajectory):
        yield from self._fill(t, SUBQ, self.cfg.max_subquestion_tokens, sep="\n")
        yield from self._fill(t, ANSWER, self.cfg.max_answer_tokens, sep="")
        t.n_steps += 1

    def _decide(self, t: Trajectory):
        """Another step (True) or the important features, by the model's next-token choice between the tags."""
        a, b = self._encode(f"\n<{SUBQ}>"), self._encode(f"\n<{FEATURES}>")
        c = _common_prefix(a, b)
        self._insert(t, a[:c])
        la, lb = yield Peek(t.context, (a[c], b[c]))
        if self.cfg.temperature <= 0:
            more = la >= lb
        else:
            p_more = 1.0 / (1.0 + math.exp((lb - la) / self.cfg.temperature))
            more = np.random.default_rng(sample_seed(t.seed, len(t.ids))).random() < p_more
        chosen = a if more else b
        self._insert(t, chosen[c:])
        t.open_tag = SUBQ if more else FEATURES
        return bool(more)

    # ================================================================== fields
    def _fill(self, t: Trajectory, tag: str, max_tokens: int, sep: str):
        """Open ``tag`` (unless already open), let the model write its field, close it."""
        self._open(t, tag, sep)
        s = yield Draw(t.context, self._params(tag, max_tokens), sample_seed(t.seed, len(t.ids)))
        target = s.text + f"</{tag}>"
        k = len(s.token_ids)
        while k > 0 and not target.startswith(self.backend.decode(s.token_ids[:k])):
            k -= 1
        self._model_text(t, tag, s.token_ids[:k], s.logprobs[:k],
                         list(s.entropies[:k]) if s.entropies is not None else [math.nan] * k)
        written = self.backend.decode(s.token_ids[:k])
        self._insert(t, self._encode(target[len(written):]))

    def _write(self, t: Trajectory, tag: str, text: str, sep: str) -> None:
        """Open ``tag`` (unless already open), write ``text`` as the field, marked model-written (a field given to
        the policy to learn: nothing was sampled, so its log-probs are 0 and its entropies NaN), close it."""
        self._open(t, tag, sep)
        ids = self._encode(text)
        self._model_text(t, tag, ids, [0.0] * len(ids), [math.nan] * len(ids))
        self._insert(t, self._encode(f"</{tag}>"))

    def _open(self, t: Trajectory, tag: str, sep: str) -> None:
        """Write ``tag``'s opening (after ``sep``) unless the framework has just opened it."""
        if t.open_tag != tag:
            self._insert(t, self._encode((sep if t.ids else "") + f"<{tag}>"))
        t.open_tag = None

    @staticmethod
    def _model_text(t: Trajectory, tag: str, ids, logprobs, entropies) -> None:
        """Append a field's content as model-written tokens and record its span."""
        start = len(t.ids)
        t.ids += list(ids)
        t.mask += [True] * len(ids)
        t.logprobs += list(logprobs)
        t.entropies += list(entropies)
        t.spans.append((tag, start, len(t.ids)))

    def _params(self, tag: str, max_tokens: int) -> SamplingParams:
        """The sampling settings of a field (one object per field kind, so drivers can batch equal ones)."""
        cache = self._params_cache
        if (tag, max_tokens) not in cache:
            names = self._name_list() if tag == FEATURES and self.cfg.features_choice else None
            cache[(tag, max_tokens)] = SamplingParams(
                max_tokens=max_tokens, temperature=self.cfg.temperature, top_p=self.cfg.top_p, top_k=self.cfg.top_k,
                stop=ALL_TAGS, stop_on_special=True, names=names)
        return cache[(tag, max_tokens)]

    def _evidence(self, t: Trajectory) -> None:
        """Restate the record lines of the features the policy named (``cfg.evidence``), framework-written."""
        start, end = next(((s, e) for f, s, e in reversed(t.spans) if f == FEATURES), (0, 0))
        named, unknown = self.matcher.map(split_feature_list(self.backend.decode(t.ids[start:end])))
        unknown = set(unknown)
        known = [n for n in named if n not in unknown]
        self._insert(t, self._encode("\n" + evidence_block(self.backend.decode(t.prompt_ids), known)))

    def _answer(self, t: Trajectory, sep: str):
        """Write ``<final_answer>``, read the probability from the next-token distribution, write it, close."""
        digits = self.cfg.readout == "digits"
        lead = "" if not t.ids else sep
        self._insert(t, self._encode(f"{lead}<{FINAL}>" + ("0." if digits else "")))
        t.readout_index = len(t.ids)
        cand, values = digit_tokens(self.backend) if digits else yes_no_tokens(self.backend)
        row = np.asarray((yield Peek(t.context, tuple(cand))))  # (C,)
        if self.cfg.sample_readout and self.cfg.temperature > 0:  # the answer token is drawn: model-written
            z = row / self.cfg.temperature
            w = np.exp(z - z.max())
            rng = np.random.default_rng(sample_seed(t.seed, len(t.ids)))
            j = int(rng.choice(len(cand), p=w / w.sum()))
            # digits: the drawn number is the answer; yes/no: the drawn word is written, the probability is read
            drawn = values[j] if digits else expected_readout(row, values)
            t.probability = float(min(1.0, max(0.0, drawn)))
            t.ids.append(int(cand[j]))
            t.mask.append(True)
            t.logprobs.append(float(row[j]))
            t.entropies.append(math.nan)  # only the candidates' probabilities are read here
            self._insert(t, self._encode(f"</{FINAL}>"))
        else:  # the expectation over the answer tokens, written by the framework
            t.probability = min(1.0, max(0.0, float(expected_readout(row, values))))
            if digits:
                self._insert(t, self._encode(f"{t.probability:.2f}"[2:] + f"</{FINAL}>"))
            else:  # the likelier word at the slot (SFT and RL put the label's word there)
                self._insert(t, [answer_token(self.backend, int(t.probability >= 0.5))])
                self._insert(t, self._encode(f"</{FINAL}>"))
        t.stage = DONE

    # ================================================================== helpers
    def _name_list(self):
        """The cohort's feature names as the only content the features field may take (built once)."""
        if getattr(self, "_names", None) is None and self.matcher.names:
            from eagrl.llm.choice import NameList

            end = sorted(self.backend.stop_token_ids())
            self._names = NameList.build(self.matcher.names, self._encode, end[0] if end else 0,
                                         self.cfg.max_features) if end else None
        return getattr(self, "_names", None)

    def _insert(self, t: Trajectory, ids: list[int]) -> None:
        t.ids += ids
        t.mask += [False] * len(ids)
        t.logprobs += [0.0] * len(ids)
        t.entropies += [math.nan] * len(ids)

    def _encode(self, text: str) -> list[int]:
        return self.backend.encode(text) if text else []

    def _response(self, t: Trajectory) -> Response:
        text = self.backend.decode(t.ids)
        parsed = parse_response(text, self.matcher, self.cfg.prompt_style)
        if t.probability is not None:  # the framework read it: the exact readout, whatever word or digits follow
            parsed.probability = t.probability
            parsed.problems = [p for p in parsed.problems if p != NO_NUMBER]
            parsed.well_formed = not parsed.problems
        return Response(text, t.ids, t.mask, t.logprobs, t.spans, parsed, t.probability, t.readout_index,
                        t.n_steps, t.prompt_ids, t.entropies)

    def _free_form(self, prompts, n: int, seed) -> list[list[Response]]:
        params = SamplingParams(max_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                                top_p=self.cfg.top_p, top_k=self.cfg.top_k)
        out = []
        for prompt, group in zip(prompts, self.backend.generate(prompts, params, n=n, seed=seed)):
            row = []
            for s in group:
                parsed = parse_response(s.text, self.matcher, self.cfg.prompt_style)
                ent = list(s.entropies) if s.entropies is not None else [math.nan] * len(s.token_ids)
                row.append(Response(s.text, s.token_ids, [True] * len(s.token_ids), s.logprobs, [], parsed,
                                    parsed.probability, None, len(parsed.steps), list(prompt), ent))
            out.append(row)
        return out


# ====================================================================== readout vocabularies
def _common_prefix(a: list[int], b: list[int]) -> int:
    c = 0
    while c < min(len(a), len(b)) - 1 and a[c] == b[c]:
        c += 1
    return c


def _vocab_strings(backend: GenerationBackend) -> list[str]:
    tok = backend.tokenizer
    return [tok.decode([i]) for i in range(len(tok))]


def expected_readout(logprobs, values: np.ndarray):
    """The probability a readout gives: the expectation of the candidates' ``values`` under the softmax of their
    log-probs (over the last axis: one row, or one per context)."""
    lp = np.asarray(logprobs)
    w = np.exp(lp - lp.max(axis=-1, keepdims=True))
    return (w @ values) / w.sum(axis=-1)


def digit_tokens(backend: GenerationBackend) -> tuple[list[int], np.ndarray]:
    """Token ids that are runs of digits, and the probability each stands for after "0." (computed once)."""
    cache = backend.__dict__.setdefault("_readout_cache", {})
    if "digits" not in cache:
        ids, values = [], []
        for i, s in enumerate(_vocab_strings(backend)):
            if s and s.isascii() and s.isdigit() and len(s) <= 4:
                ids.append(i)
                values.append(float("0." + s) + 0.5 * 10.0 ** -len(s))
        if not ids:
            raise ValueError("the tokenizer has no digit tokens; use generation.readout=yesno")
        cache["digits"] = (ids, np.asarray(values))
    return cache["digits"]


YES_SPELLINGS = ("yes", "Yes", "YES", " yes", " Yes", " YES")
NO_SPELLINGS = ("no", "No", "NO", " no", " No", " NO")


def yes_no_tokens(backend: GenerationBackend) -> tuple[list[int], np.ndarray]:
    """Tokens of the yes/no spellings (value 1 for yes, 0 for no; :func:`yes_no_ids`); the readout sums over them.

    A token that stands for both words would count for both: it is a ValueError, never a silent bias."""
    cache = backend.__dict__.setdefault("_readout_cache", {})
    if "yesno" not in cache:
        yes, no = yes_no_ids(backend.encode)
        cache["yesno"] = (yes + no, np.asarray([1.0] * len(yes) + [0.0] * len(no)))
    return cache["yesno"]


def yes_no_ids(encode) -> tuple[list[int], list[int]]:
    """(tokens of the yes spellings, of the no spellings), each sorted, from a text -> ids function.

    A spelling counts where it is one token (a leading-space spelling split into " " + "yes" would count every
    space); a word none of whose spellings is one token falls back to the first token of its bare spelling."""
    firsts = []
    for words in (YES_SPELLINGS, NO_SPELLINGS):
        encoded = [encode(w) for w in words]
        single = sorted({e[0] for e in encoded if len(e) == 1})
        firsts.append(single or [encoded[0][0]])
    both = set(firsts[0]) & set(firsts[1])
    if both:
        raise ValueError(f"the tokenizer starts a spelling of both 'yes' and 'no' with token(s) {sorted(both)}; "
                         "the yes/no readout needs distinct first tokens (use generation.readout=digits)")
    return firsts[0], firsts[1]


def answer_words(encode) -> tuple[int, int]:
    """(token of "no", token of "yes"): what the framework writes, and SFT / RL train, at the answer slot for a label
    of 0 / 1 (each word's first token), from a text -> ids function."""
    return encode("no")[0], encode("yes")[0]


def answer_token(backend: GenerationBackend, label: int) -> int:
    """The answer slot's token for ``label`` (:func:`answer_words`)."""
    return answer_words(backend.encode)[int(label)]


def tokenizer_encode(tokenizer):
    """text -> token ids without special tokens (what the backends' ``encode`` does), for code holding a tokenizer."""
    return lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"])
