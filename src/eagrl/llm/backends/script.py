"""Writing scripts: how the structured generator talks to a backend, one response at a time.

A *script* is a Python generator that writes one response. It yields an operation whenever it needs the
model, and receives the answer:

* :class:`Draw` (``context``, sampling params, seed) -> a :class:`~eagrl.llm.backends.base.Sample`: the model
  writes a field from the end of ``context``;
* :class:`Peek` (``context``, candidate token ids) -> ``(C,)`` log-probs of the candidates as the next token.

Between operations the script appends the tokens the framework inserts (tags) to its own context; every
operation carries the whole context (prompt + response so far), so a backend needs nothing else.

Two drivers run many scripts:

* :func:`run_lockstep` (any backend): gathers the scripts' pending operations and serves them with one
  ``generate`` call per sampling setting and one ``next_token_logprobs`` call per candidate set, until every
  script has ended. A field that ends early in one response waits for the others (a barrier per field).
* ``TransformersBackend.run_scripts``: one decoding loop for all of them, each response advancing at its own
  pace: a response whose field has ended has its tags fed into the same batched forward passes in which the
  others keep writing, so the loop costs about as many forward passes as plain sampling of the longest
  response, and no keys/values are copied between fields.
"""
from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np

from eagrl.llm.backends.base import SamplingParams


@dataclass
class Draw:
    context: list[int]
    params: SamplingParams
    seed: int


@dataclass
class Peek:
    context: list[int]
    candidates: tuple[int, ...]


Op = Draw | Peek
Script = Generator[Op, object, None]


def first_op(script: Script) -> Op | None:
    """Start a script; None when it needs no model at all."""
    try:
        return next(script)
    except StopIteration:
        return None


def answer(script: Script, result) -> Op | None:
    """Send an operation's result; the script's next operation, or None when it has ended."""
    try:
        return script.send(result)
    except StopIteration:
        return None


def run_lockstep(backend, scripts: Sequence[Script]) -> None:
    """Run the scripts to their end on any backend, serving their pending operations in batched calls."""
    pending: dict[int, Op] = {}
    for i, s in enumerate(scripts):
        op = first_op(s)
        if op is not None:
            pending[i] = op
    while pending:
        draws: dict[tuple, list[int]] = {}
        peeks: dict[tuple, list[int]] = {}
        for i, op in pending.items():
            if isinstance(op, Draw):
                draws.setdefault(_params_key(op.params), []).append(i)
            else:
                peeks.setdefault(tuple(op.candidates), []).append(i)
        results: dict[int, object] = {}
        for idx in draws.values():
            params = pending[idx[0]].params
            samples = backend.generate([pending[i].context for i in idx], params, n=1,
                                       seed=[pending[i].seed for i in idx])
            results.update({i: s for i, (s,) in zip(idx, samples)})
        for cands, idx in peeks.items():
            lp = np.asarray(backend.next_token_logprobs([pending[i].context for i in idx], list(cands)))
            results.update({i: row for i, row in zip(idx, lp)})
        nxt = {}
        for i in pending:
            op = answer(scripts[i], results[i])
            if op is not None:
                nxt[i] = op
        pending = nxt


def _params_key(params: SamplingParams) -> tuple:
    # the name list is one object per generator; everything else compares by value
    return tuple(v for k, v in vars(params).items() if k != "names") + (id(params.names),)
