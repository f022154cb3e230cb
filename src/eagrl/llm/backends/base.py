"""The generation interface every backend implements, and the pieces they share.

A backend works on token ids, so that RL trains on exactly the tokens that were sampled:

* ``generate(prompts, n=G, max_tokens, stop, seed)`` -> for each prompt, ``n`` :class:`Sample` s, each with
  its text, token ids and the per-token log-probs of the model;
* ``next_token_logprobs(prompts, candidates)`` -> the log-probs of a few candidate next tokens, read from
  the full next-token distribution (the structured generator reads the final probability this way).

Conventions (the same as vLLM's defaults): ``text`` stops before the matched stop string and excludes the
EOS token; ``token_ids`` run up to and including the token that completed the stop string (or the EOS
token); ``logprobs[i]`` is log p(token_ids[i]) under the model's own distribution (temperature 1, before
top-k/top-p); ``entropies[i]``, where a backend reports them (the transformers backend does; vLLM does not),
is the entropy of that same distribution at the position of token i. Sample j of prompt i is drawn with a generator
seeded from ``(seed_i, j)`` only, so it does not depend on what else is in the batch.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from eagrl.errors import EagrlError
from eagrl.llm.choice import NameList  # noqa: F401 - the type of SamplingParams.names


class BackendUnavailable(EagrlError):
    """The configured generation backend cannot run here (a missing extra, no GPU)."""


@dataclass
class Sample:
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (a stop string), "eos" (an end token), "length" (max_tokens)
    stop: str | None = None  # the stop string that ended it
    entropies: list[float] | None = None  # entropy of the model's distribution at each token (None: not reported)


@dataclass
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    stop_on_special: bool = False  # also end at any special token (not only EOS), e.g. inside a tag field
    ignore_eos: bool = False  # keep going past EOS (benchmarks: exactly max_tokens per sample)
    extra_stop_ids: tuple[int, ...] = field(default=())
    names: "NameList | None" = None  # constrain the output to a separated list of these names (choice.py)


def sample_seed(seed: int, j: int) -> int:
    """The seed of sample j drawn from a prompt seeded ``seed``."""
    return (int(seed) * 1_000_003 + int(j)) % (2**63 - 1)


def seeds_for(prompts: Sequence, seed: int | Sequence[int]) -> list[int]:
    if isinstance(seed, (int, np.integer)):
        return [sample_seed(int(seed), i) for i in range(len(prompts))]
    seeds = [int(s) for s in seed]
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
    return seeds


def find_stop(text: str, stops: Sequence[str]) -> tuple[int, str | None]:
    """(index of the earliest stop string in text, which one), or (-1, None)."""
    best, which = -1, None
    for s in stops:
        if not s:
            continue
        i = text.find(s)
        if i >= 0 and (best < 0 or i < best):
            best, which = i, s
    return best, which


class GenerationBackend(ABC):
    """One model behind generate / next_token_logprobs; see the module docstring for the conventions."""

    tokenizer: object

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        n: int = 1,
        seed: int | Sequence[int] = 0,
    ) -> list[list[Sample]]:
        """``n`` samples per prompt; ``seed`` is one base seed or one seed per prompt."""

    @abstractmethod
    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], candidates: Sequence[int]) -> np.ndarray:
        """(B, C) log p(candidate | prompt) under the full next-token distribution (temperature 1)."""

    # ------------------------------------------------------------------ text helpers
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def stop_token_ids(self) -> set[int]:
        ids = set()
        for v in (getattr(self.tokenizer, "eos_token_id", None),):
            if isinstance(v, int):
                ids.add(v)
        return ids

    def special_token_ids(self) -> set[int]:
        return set(getattr(self.tokenizer, "all_special_ids", []) or [])
