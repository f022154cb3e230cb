"""Constrained decoding of a separated list of names (the ``<important_features>`` field).

The field may only hold 1 to ``max_items`` of the cohort's feature names, separated by ``"; "``, so that
every name the policy writes is one the expert's C_exp can contain (METHOD: R_att < 0.3 is the sign of names
that do not match the expert's schema; small models otherwise write "feature name; feature name").

:class:`NameList` holds the token sequences and answers "which tokens may come next" for the transformers
backend's own decode loop (it shares a KV cache across calls, so ``generate``'s ``prefix_allowed_tokens_fn``
cannot be used), and gives the same constraint as a regular expression for engines with guided decoding (vLLM).
Written by hand: a token trie over a few hundred names is all it takes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Sequence


def _trie(seqs: Sequence[Sequence[int]]) -> dict:
    root: dict = {}
    for seq in seqs:
        node = root
        for tok in seq:
            node = node.setdefault(int(tok), {})
        node[None] = True  # end of a whole item
    return root


@dataclass(frozen=True)
class NameList:
    """``names`` joined by ``sep``: the first item tokenised alone, the next ones with the separator in front."""

    names: tuple[str, ...]
    first: tuple[tuple[int, ...], ...]  # token ids of each name at the start of the field
    more: tuple[tuple[int, ...], ...]  # token ids of sep + name
    end: int  # the token that closes the list (a special token the caller stops on)
    max_items: int = 5
    sep: str = "; "
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    @classmethod
    def build(cls, names: Sequence[str], encode: Callable[[str], list[int]], end: int, max_items: int = 5,
              sep: str = "; ") -> "NameList":
        names = tuple(dict.fromkeys(str(n) for n in names if str(n).strip()))
        if not names:
            raise ValueError("a constrained name list needs at least one name")
        return cls(names, tuple(tuple(encode(n)) for n in names), tuple(tuple(encode(sep + n)) for n in names),
                   int(end), max(1, int(max_items)), sep)

    @cached_property
    def _first_trie(self) -> dict:
        return _trie(self.first)

    @cached_property
    def _more_trie(self) -> dict:
        return _trie(self.more)

    def allowed(self, generated: Sequence[int]) -> list[int]:
        """Token ids that may follow ``generated`` (the field's tokens so far); ``[end]`` when it must close."""
        key = tuple(generated)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        # states: (trie node, completed items); a name that is a prefix of another keeps several states alive
        states = [(self._first_trie, 0)]
        for tok in generated:
            nxt = []
            for node, done in states:
                if tok in node:
                    nxt.append((node[tok], done))
                if None in node and done + 1 < self.max_items and tok in self._more_trie:
                    nxt.append((self._more_trie[tok], done + 1))
            states = nxt
            if not states:
                break
        out: set[int] = set()
        for node, done in states:
            out.update(t for t in node if t is not None)
            if None in node:
                out.add(self.end)
                if done + 1 < self.max_items:
                    out.update(t for t in self._more_trie if t is not None)
        result = sorted(out) if out else [self.end]
        if len(self._cache) < 50_000:
            self._cache[key] = result
        return result

    def regex(self) -> str:
        """The same language as a regular expression (for guided decoding in vLLM)."""
        alt = "|".join(re.escape(n) for n in sorted(self.names, key=len, reverse=True))
        return f"({alt})({re.escape(self.sep)}({alt})){{0,{self.max_items - 1}}}"
