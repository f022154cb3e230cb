"""The transformers backend's fused decoding loop: every structured-generation script of a batch advances at its
own pace in one loop of forward passes (see the module docstring of :mod:`eagrl.llm.backends.transformers_backend`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from eagrl.llm.backends.base import Sample, sample_seed
from eagrl.llm.backends.sampling import Row, constrain, sample_tokens
from eagrl.llm.backends.script import Draw, Peek, answer, first_op


@dataclass
class _Draw:
    """A field being sampled in the script loop: the row state :meth:`TransformersBackend._decode` keeps, plus
    the field's settings."""

    op: Draw
    row: Row
    stop_ids: set[int]
    gen: torch.Generator
    text: object  # ids -> text after the context


class ScriptLoop:
    """One decoding loop over a batch of writing scripts.

    Row b's keys/values hold ``kv[b]`` (its context as fed so far). Each pass, a row either consumes the
    logits at the end of its context (a Peek is answered, a Draw samples one token) or still has tokens queued
    (the framework's tags, or the token it just sampled); all rows with a queue feed the same number of tokens
    in one batched forward (one each while any row is sampling), so a response whose field ended never waits
    for the others. A token the script dropped after sampling (it ran past the field's end) is hidden from
    the attention mask and its position reused, so no cache is ever copied. Finished rows leave the batch.
    """

    def __init__(self, backend, scripts):  # backend: the TransformersBackend that runs the loop (its model and cache)
        self.be = backend
        self.scripts = list(scripts)
        self.ops: list = [first_op(sc) for sc in self.scripts]
        self.rows = [b for b, op in enumerate(self.ops) if op is not None]  # script index of each batch row
        self.draws: dict[int, _Draw] = {}
        self.queue: dict[int, list[int]] = {}

    def run(self) -> None:
        if not self.rows:
            return
        be = self.be
        ctx = [np.asarray(self.ops[i].context, dtype=np.int64) for i in self.rows]
        be._prefill_alone(ctx, shared=False)
        self.cache, self.mask, self.lengths, logits = be._prefill(ctx, reserve=256)
        self.kv = [c.tolist() for c in ctx]
        while self.rows:
            logp = torch.log_softmax(logits.float(), -1)  # (B, V)
            entropy = torch.special.entr(logp.exp()).sum(-1)  # (B,)
            ended = []
            for b, i in enumerate(self.rows):
                if not self.queue.get(i) and not self._serve(b, i, logits[b], logp[b], float(entropy[b])):
                    ended.append(b)
            if ended:
                self._drop(ended)
            if not self.rows:
                break
            logits = self._feed()

    # ------------------------------------------------------------------ one row
    def _serve(self, b: int, i: int, logits: torch.Tensor, logp: torch.Tensor, entropy: float) -> bool:
        """Answer row b's operations from the logits at the end of its context until it has tokens to feed;
        False when its script has ended."""
        while True:
            op = self.ops[i]
            if isinstance(op, Peek):
                result = logp[torch.as_tensor(op.candidates)].cpu().numpy()
            else:
                d = self.draws.get(i) or self._start_draw(i, op)
                result = self._sample(d, logits, logp, entropy)
                if result is None:  # the field goes on: feed the sampled token
                    self.queue[i] = [d.row.generated[-1]]
                    return True
                del self.draws[i]
            self.ops[i] = answer(self.scripts[i], result)
            if self.ops[i] is None:
                return False
            if self._reconcile(b, i):
                return True

    def _start_draw(self, i: int, op: Draw) -> _Draw:
        p = op.params
        stop_ids = self.be._stop_ids(p) | ({p.names.end} if p.names is not None else set())
        seed = sample_seed(op.seed, 0)  # as generate(n=1, seed=[op.seed]) seeds it
        d = _Draw(op, Row(np.asarray(op.context), seed, [], []), stop_ids, torch.Generator().manual_seed(seed),
                  self.be._text_of(op.context))
        self.draws[i] = d
        return d

    def _sample(self, d: _Draw, logits: torch.Tensor, logp: torch.Tensor, entropy: float) -> Sample | None:
        """Sample row's next token of field ``d``; the finished :class:`Sample`, or None while it goes on."""
        p, r = d.op.params, d.row
        x = logits.float()[None]  # (1, V)
        if p.names is not None:  # only names from the list may be sampled; logp stays the model's own
            x = constrain(x, [r], p.names)
        tok = int(sample_tokens(x, p, [d.gen])[0])
        r.take(tok, float(logp[tok]), entropy, d.stop_ids, p.stop, d.text)
        return r.sample() if r.done or len(r.generated) >= p.max_tokens else None  # "length" unless it stopped

    def _reconcile(self, b: int, i: int) -> bool:
        """Line row b's keys/values up with its script's context: hide tokens the script dropped, queue the
        ones it added. True when there is something to feed (else the current logits serve the next op)."""
        ctx = self.ops[i].context
        kv = self.kv[b]
        m = min(len(kv), len(ctx))
        diff = np.flatnonzero(np.asarray(kv[:m]) != np.asarray(ctx[:m]))
        common = int(diff[0]) if diff.size else m
        drop = len(kv) - common
        if drop and common == len(ctx):
            common -= 1  # nothing new after the cut: feed the last kept token again for fresh logits
            drop += 1
        if drop:
            valid = torch.nonzero(self.mask[b], as_tuple=True)[0]
            self.mask[b, valid[-drop:]] = 0
            self.lengths[b] -= drop
            del kv[common:]
        self.queue[i] = list(ctx[common:])
        return bool(self.queue[i])

    # ------------------------------------------------------------------ the batch
    def _feed(self) -> torch.Tensor:
        """One forward over every row's next queued tokens; the (B, V) logits at each row's end."""
        dev = self.be.device
        n = min(len(self.queue[i]) for i in self.rows)  # > 0: every row left has something queued
        ids = torch.as_tensor([self.queue[i][:n] for i in self.rows], dtype=torch.long, device=dev)  # (B, n)
        for b, i in enumerate(self.rows):
            self.kv[b] += self.queue[i][:n]
            del self.queue[i][:n]
        positions = self.lengths[:, None] + torch.arange(n, device=dev)  # (B, n) real tokens before each
        self.mask = torch.cat([self.mask, torch.ones(len(self.rows), n, dtype=self.mask.dtype, device=dev)], 1)
        self.lengths = self.lengths + n
        return self.be._forward(ids, self.mask, positions, self.cache, logits_to_keep=1)[:, -1]  # (B, V)

    def _drop(self, ended: list[int]) -> None:
        """Store the ended rows' keys/values for later calls, then take them out of the batch."""
        be = self.be
        for b in ended:
            be._store_rows(self.cache, self.mask[b:b + 1], [np.asarray(self.kv[b], dtype=np.int64)], rows=[b])
        gone = set(ended)
        keep = [b for b in range(len(self.rows)) if b not in gone]
        self.rows = [self.rows[b] for b in keep]
        self.kv = [self.kv[b] for b in keep]
        if keep:
            idx = torch.as_tensor(keep, device=self.mask.device)
            self.mask, self.lengths = self.mask[idx], self.lengths[idx]
            for layer in self.cache.layers:
                layer.keep_rows(idx)
