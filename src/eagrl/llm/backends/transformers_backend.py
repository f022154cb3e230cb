"""Generation with a transformers causal LM: batched decoding over a KV cache, with prefix reuse.

Prefix reuse is what makes G samples of one long patient prompt cheap on a CPU: the prompt is encoded
once, its keys/values are kept in a small LRU store (:class:`PrefixStore`), and every row of a batch
starts from the longest stored prefix of its own ids, so only the rest is computed. The store also keeps
each row's cache when decoding ends, so the structured generator, which alternates between forcing a few
tag tokens and letting the model write a field, only ever computes the new tokens.

A batch is laid out as ``[left pad | stored prefix | rest of prompt | pad | generated ...]`` per row; the
2-D attention mask hides every pad position (holes included) and explicit ``position_ids`` count only
real tokens, so a row's logits are the same as if it ran alone (up to float rounding). Stored entries are
compacted (holes removed) before they are kept. Models with sliding-window layers get no reuse.

:meth:`TransformersBackend.run_scripts` runs the structured generator's writing scripts
(:mod:`eagrl.llm.backends.script`) in one decoding loop per batch instead of one ``generate`` call per field:
each response advances at its own pace (its tags are fed in the same forward passes in which the others
sample), so no response waits for the slowest one at every field and no keys/values are gathered between
fields. A token a script drops (it ran past the field's end) becomes a hole in the mask.
"""
from __future__ import annotations

import contextlib
import inspect
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer

from eagrl.llm.backends.base import GenerationBackend, Sample, SamplingParams, find_stop, sample_seed, seeds_for
from eagrl.llm.backends.script import Draw, Peek, answer, first_op, run_lockstep


@dataclass
class _Entry:
    ids: np.ndarray  # (L,) token ids the keys/values belong to
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (H, L_buf, D) keys and values (views of a batch cache)
    index: torch.Tensor  # (L,) where token i's keys/values sit in the L_buf axis (skips pads and holes)

    def gather(self, layer: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(H, n, D) keys and values of the first n tokens."""
        k, v = self.kv[layer]
        idx = self.index[:n]
        return k.index_select(1, idx), v.index_select(1, idx)


class PrefixStore:
    """LRU store of per-sequence keys/values, looked up by longest common token prefix.

    Entries are views of the batch cache they came from plus an index of the real positions, so keeping a
    row costs nothing until it is used again (then one gather).
    """

    def __init__(self, capacity_tokens: int):
        self.capacity = capacity_tokens
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._tokens = 0
        self.hits = 0  # prompt tokens served from the store
        self.misses = 0  # prompt tokens computed

    def lookup(self, ids: np.ndarray) -> tuple[_Entry | None, int]:
        """The entry sharing the longest prefix with ``ids`` and that length (at most len(ids) - 1)."""
        best, best_key, best_len, limit = None, None, 0, len(ids) - 1
        for key, e in self._entries.items():
            m = min(len(e.ids), limit)
            if m <= best_len:
                continue
            diff = np.flatnonzero(e.ids[:m] != ids[:m])
            common = int(diff[0]) if diff.size else m
            if common > best_len:
                best, best_key, best_len = e, key, common
        if best_key is not None:
            self._entries.move_to_end(best_key)
        return best, best_len

    def put(self, entry: _Entry) -> None:
        n = len(entry.ids)
        if self.capacity <= 0 or n == 0 or n > self.capacity:
            return
        key = entry.ids.tobytes()
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        self._entries[key] = entry
        self._tokens += n
        while self._tokens > self.capacity:
            _, old = self._entries.popitem(last=False)
            self._tokens -= len(old.ids)

    def clear(self) -> None:
        self._entries.clear()
        self._tokens = 0

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class _Row:
    prompt: np.ndarray  # (P,) prompt ids
    seed: int
    generated: list[int]
    logprobs: list[float]
    entropies: list[float] = field(default_factory=list)
    done: bool = False
    finish_reason: str = "length"
    stop: str | None = None
    text: str = ""

    def take(self, tok: int, logp: float, entropy: float, stop_ids: set[int], stops: tuple[str, ...], text) -> None:
        """Append a sampled token; end the row at a stop token or a stop string (``text``: ids -> their text)."""
        self.generated.append(tok)
        self.logprobs.append(logp)
        self.entropies.append(entropy)
        if tok in stop_ids:
            self.done, self.finish_reason, self.text = True, "eos", text(self.generated[:-1])
            return
        self.text = text(self.generated)
        if stops:
            i, which = find_stop(self.text, stops)
            if i >= 0:
                self.done, self.finish_reason, self.stop, self.text = True, "stop", which, self.text[:i]

    def sample(self) -> Sample:
        return Sample(self.text, self.generated, self.logprobs, self.finish_reason, self.stop, self.entropies)


class TransformersBackend(GenerationBackend):
    def __init__(self, model, tokenizer, *, batch_size: int = 8, prefix_cache_tokens: int = 16384,
                 threads: int | None = None):
        self.model = model.eval()
        self.threads = threads
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._config = base.config
        self._cache_kw = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        sliding = any(getattr(self._config, k, None) for k in ("sliding_window", "attention_chunk_size"))
        sliding = sliding and getattr(self._config, "use_sliding_window", True)
        self._sliding = bool(sliding)
        self._n_layers = int(getattr(self._config.get_text_config(decoder=True), "num_hidden_layers", 0))
        self.store = PrefixStore(0 if sliding else prefix_cache_tokens)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        gen_eos = gen_eos if isinstance(gen_eos, list) else [] if gen_eos is None else [gen_eos]
        self._eos = self.stop_token_ids() | set(gen_eos)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ================================================================== public API
    def generate(self, prompts, params: SamplingParams, *, n: int = 1, seed=0) -> list[list[Sample]]:
        with torch.inference_mode(), _threads(self.threads):
            return self._generate(prompts, params, n, seed)

    def next_token_logprobs(self, prompts, candidates) -> np.ndarray:
        with torch.inference_mode(), _threads(self.threads):
            return self._next_token_logprobs(prompts, candidates)

    def _generate(self, prompts, params: SamplingParams, n: int, seed) -> list[list[Sample]]:
        prompt_arrays = [np.asarray(list(p), dtype=np.int64) for p in prompts]
        if any(len(p) == 0 for p in prompt_arrays):
            raise ValueError("cannot generate from an empty prompt")
        seeds = seeds_for(prompt_arrays, seed)
        self._prefill_alone(prompt_arrays, shared=n > 1)
        rows = [_Row(p, sample_seed(s, j), [], []) for p, s in zip(prompt_arrays, seeds) for j in range(n)]
        for start in range(0, len(rows), self.batch_size):
            self._decode(rows[start:start + self.batch_size], params)
        out = [r.sample() for r in rows]
        return [out[i * n:(i + 1) * n] for i in range(len(prompt_arrays))]

    def _next_token_logprobs(self, prompts, candidates) -> np.ndarray:
        cand = torch.as_tensor(list(candidates), dtype=torch.long)
        out = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = [np.asarray(list(p), dtype=np.int64) for p in prompts[start:start + self.batch_size]]
            self._prefill_alone(chunk, shared=False)
            cache, mask, lengths, logits = self._prefill(chunk)
            self._store_rows(cache, mask, chunk)
            out.append(torch.log_softmax(logits.float(), -1)[:, cand.to(logits.device)].cpu())
        return torch.cat(out).numpy()

    # ================================================================== prefill
    def _prefill_alone(self, prompts: list[np.ndarray], shared: bool, long_rest: int = 256) -> None:
        """Encode, one at a time, every prompt that several rows share (``shared``, or duplicates) and every
        prompt with a long uncached part, and store them: rows then start from the stored keys/values, so a
        shared prompt is computed once and a batch of long prompts wastes nothing on padding."""
        if self.store.capacity <= 0:
            return
        counts: dict[bytes, int] = {}
        for p in prompts:
            counts[p.tobytes()] = counts.get(p.tobytes(), 0) + 1
        done = set()
        for p in prompts:
            key = p.tobytes()
            if key in done:
                continue
            done.add(key)
            _, have = self.store.lookup(p)
            rest = len(p) - have
            if rest > long_rest or (rest > 1 and (shared or counts[key] > 1)):
                cache, mask, _, _ = self._prefill([p])
                self._store_rows(cache, mask, [p])

    def _prefill(self, prompts: list[np.ndarray], reserve: int = 0):
        """Run every row's uncached suffix; returns (cache, mask (B, L), real lengths (B,), last logits (B, V))."""
        dev = self.device
        found = [self.store.lookup(p) for p in prompts]
        used = [n for _, n in found]
        self.store.hits += sum(used)
        self.store.misses += sum(len(p) - u for p, u in zip(prompts, used))
        pmax = max(used)
        rests = [p[u:] for p, u in zip(prompts, used)]
        rmax = max(len(r) for r in rests)
        cache = self._new_cache()
        if pmax > 0:
            for li, layer in enumerate(cache.layers):
                rows = [entry.gather(li, u) if entry is not None and u > 0 else None for entry, u in found]
                layer.prime(rows, pmax, rmax + reserve)
        else:
            for layer in cache.layers:
                layer.reserve = rmax + reserve
        prefix_mask = torch.zeros(len(prompts), pmax, dtype=torch.long, device=dev)
        for b, u in enumerate(used):
            prefix_mask[b, pmax - u:] = 1
        input_ids = torch.full((len(prompts), rmax), self.pad_id, dtype=torch.long, device=dev)
        rest_mask = torch.zeros(len(prompts), rmax, dtype=torch.long, device=dev)
        positions = torch.zeros(len(prompts), rmax, dtype=torch.long, device=dev)
        for b, (r, u) in enumerate(zip(rests, used)):
            input_ids[b, :len(r)] = torch.as_tensor(r, device=dev)
            rest_mask[b, :len(r)] = 1
            positions[b] = u + torch.arange(rmax, device=dev).clamp(max=max(len(r) - 1, 0))
        mask = torch.cat([prefix_mask, rest_mask], 1)  # (B, pmax + rmax)
        last = torch.as_tensor([len(r) - 1 for r in rests], device=dev)  # (B,)
        keep = torch.unique(last)
        logits = self._forward(input_ids, mask, positions, cache, logits_to_keep=keep)  # (B, K, V)
        logits = logits[torch.arange(len(prompts), device=dev), torch.searchsorted(keep, last)]  # (B, V)
        lengths = torch.as_tensor([len(p) for p in prompts], device=dev)
        return cache, mask, lengths, logits

    # ================================================================== decoding
    def _decode(self, rows: list[_Row], params: SamplingParams) -> None:
        dev = self.device
        cache, mask, lengths, logits = self._prefill([r.prompt for r in rows], reserve=params.max_tokens)
        gens = [torch.Generator().manual_seed(r.seed) for r in rows]
        stop_ids = self._stop_ids(params)
        texts = [self._text_of(r.prompt) for r in rows]
        for step in range(params.max_tokens):
            logp = torch.log_softmax(logits.float(), -1)  # (B, V)
            entropy = torch.special.entr(logp.exp()).sum(-1)  # (B,) what RL's entropy-aware clipping reads; ~free here
            if params.names is not None:  # only names from the list may be sampled; logp stays the model's own
                tokens = _sample(_constrain(logits.float(), rows, params.names), params, gens)
                if params.names.end not in stop_ids:
                    stop_ids = stop_ids | {params.names.end}
            else:
                tokens = _sample(logits.float(), params, gens)  # (B,)
            for b, r in enumerate(rows):
                if not r.done:
                    tok = int(tokens[b])
                    r.take(tok, float(logp[b, tok]), float(entropy[b]), stop_ids, params.stop, texts[b])
            if all(r.done for r in rows) or step == params.max_tokens - 1:
                break
            active = torch.as_tensor([0 if r.done else 1 for r in rows], device=dev)
            feed = torch.where(active.bool(), tokens.to(dev), torch.full_like(tokens.to(dev), self.pad_id))
            mask = torch.cat([mask, active[:, None]], 1)  # (B, L + 1)
            positions = lengths[:, None].clone()  # (B, 1) real tokens before this one
            lengths = lengths + active
            logits = self._forward(feed[:, None], mask, positions, cache, logits_to_keep=1)[:, -1]  # (B, V)
        # Keep every row's keys/values (prompt + generated tokens fed so far) for the next call.
        fed = [np.concatenate([r.prompt, np.asarray(r.generated[:-1], dtype=np.int64)]) for r in rows]
        self._store_rows(cache, mask, fed)

    # ================================================================== writing scripts in one loop
    def run_scripts(self, scripts) -> None:
        """Run writing scripts (``eagrl.llm.backends.script``) to their end, ``batch_size`` at a time, each
        batch in one decoding loop where every response advances at its own pace."""
        if self._sliding:  # sliding-window layers keep no full cache to hide tokens in: one call per field
            run_lockstep(self, scripts)
            return
        with torch.inference_mode(), _threads(self.threads):
            for start in range(0, len(scripts), self.batch_size):
                _ScriptLoop(self, scripts[start:start + self.batch_size]).run()

    def _stop_ids(self, params: SamplingParams) -> set[int]:
        """The tokens that end a sample: EOS (unless ignored), the extra ones, any special token if asked."""
        stop_ids = set() if params.ignore_eos else set(self._eos)
        stop_ids |= set(params.extra_stop_ids)
        if params.stop_on_special and not params.ignore_eos:
            stop_ids |= self.special_token_ids()
        return stop_ids

    def _text_of(self, context):
        """ids -> the text they add after ``context`` (decoded with its last tokens: leading-space tokenizers)."""
        tail = [int(t) for t in context[-4:]]
        tail_text = self.decode(tail)

        def text(ids: list[int]) -> str:
            full = self.decode(tail + ids)
            return full[len(tail_text):] if full.startswith(tail_text) else self.decode(ids)
        return text

    # ================================================================== model plumbing
    def _new_cache(self):

        if self._sliding:
            return DynamicCache(config=self._config)  # no reuse: sliding layers keep only a window
        return _growing_cache(self._n_layers)

    def _forward(self, input_ids, mask, positions, cache, logits_to_keep):
        kwargs = {self._cache_kw: cache}
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=logits_to_keep, **kwargs)
        return out.logits

    def _store_rows(self, cache, mask: torch.Tensor, ids: list[np.ndarray], rows: list[int] | None = None) -> None:
        """Keep each row's keys/values (views, plus the index of its real positions) under its token ids;
        ``rows``: the cache rows they are in (default 0, 1, ...; ``mask`` has one row each)."""
        if self.store.capacity <= 0:
            return
        for j, row_ids in enumerate(ids):
            b = j if rows is None else rows[j]
            valid = torch.nonzero(mask[j], as_tuple=True)[0]  # (L_b,)
            if len(valid) != len(row_ids):  # bookkeeping mismatch: never store a wrong entry
                continue
            kv = [(layer.keys[b], layer.values[b]) for layer in cache.layers]
            self.store.put(_Entry(row_ids.astype(np.int64), kv, valid))


@dataclass
class _Draw:
    """A field being sampled in the script loop: the row state :meth:`TransformersBackend._decode` keeps, plus
    the field's settings."""

    op: Draw
    row: _Row
    stop_ids: set[int]
    gen: torch.Generator
    text: object  # ids -> text after the context


class _ScriptLoop:
    """One decoding loop over a batch of writing scripts.

    Row b's keys/values hold ``kv[b]`` (its context as fed so far). Each pass, a row either consumes the
    logits at the end of its context (a Peek is answered, a Draw samples one token) or still has tokens queued
    (the framework's tags, or the token it just sampled); all rows with a queue feed the same number of tokens
    in one batched forward (one each while any row is sampling), so a response whose field ended never waits
    for the others. A token the script dropped after sampling (it ran past the field's end) is hidden from
    the attention mask and its position reused, so no cache is ever copied. Finished rows leave the batch.
    """

    def __init__(self, backend: "TransformersBackend", scripts):
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
        d = _Draw(op, _Row(np.asarray(op.context), seed, [], []), stop_ids, torch.Generator().manual_seed(seed),
                  self.be._text_of(op.context))
        self.draws[i] = d
        return d

    def _sample(self, d: _Draw, logits: torch.Tensor, logp: torch.Tensor, entropy: float) -> Sample | None:
        """Sample row's next token of field ``d``; the finished :class:`Sample`, or None while it goes on."""
        p, r = d.op.params, d.row
        x = logits.float()[None]  # (1, V)
        if p.names is not None:  # only names from the list may be sampled; logp stays the model's own
            x = _constrain(x, [r], p.names)
        tok = int(_sample(x, p, [d.gen])[0])
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


@contextlib.contextmanager
def _threads(n: int | None):
    """Run with ``n`` torch CPU threads, then restore (on a busy shared CPU one thread is often fastest)."""
    if not n or n == torch.get_num_threads():
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _growing_cache(n_layers: int) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = [GrowingLayer() for _ in range(n_layers)]
    cache.layer_class_to_replicate = None
    return cache


class GrowingLayer(DynamicLayer):
    """A full-attention cache layer that writes into reserved room (``DynamicLayer`` concatenates, copying
    the whole cache at every decoding step)."""

    def __init__(self, reserve: int = 0):
        super().__init__()
        self.reserve = reserve
        self._n = 0
        self._kb = self._vb = None

    def prime(self, rows: list[tuple[torch.Tensor, torch.Tensor] | None], length: int, reserve: int) -> None:
        """Start from per-row prefixes ((H, l, D) pairs or None), left-padded with zeros to ``length``."""
        ref = next(r[0] for r in rows if r is not None)
        h, _, d = ref.shape
        self._kb = ref.new_zeros(len(rows), h, length + reserve, d)
        self._vb = ref.new_zeros(len(rows), h, length + reserve, d)
        for b, r in enumerate(rows):
            if r is not None:
                n = r[0].shape[1]
                self._kb[b, :, length - n:length] = r[0]
                self._vb[b, :, length - n:length] = r[1]
        self.lazy_initialization(self._kb, self._vb)
        self._n = length
        self.reserve = reserve
        self.keys, self.values = self._kb[:, :, :length], self._vb[:, :, :length]

    def update(self, key_states, value_states, *args, **kwargs):
        b, h, t, d = key_states.shape
        if self._kb is None:
            self.lazy_initialization(key_states, value_states)
            self._kb = key_states.new_empty(b, h, t + self.reserve, d)
            self._vb = value_states.new_empty(b, h, t + self.reserve, d)
        elif self._n + t > self._kb.shape[2]:
            cap = max(2 * self._kb.shape[2], self._n + t + self.reserve)
            kb, vb = key_states.new_empty(b, h, cap, d), value_states.new_empty(b, h, cap, d)
            kb[:, :, :self._n], vb[:, :, :self._n] = self._kb[:, :, :self._n], self._vb[:, :, :self._n]
            self._kb, self._vb = kb, vb
        self._kb[:, :, self._n:self._n + t] = key_states
        self._vb[:, :, self._n:self._n + t] = value_states
        self._n += t
        self.keys, self.values = self._kb[:, :, :self._n], self._vb[:, :, :self._n]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._n

    def keep_rows(self, idx: torch.Tensor) -> None:
        """Only these batch rows from now on (views already handed out keep the old buffers)."""
        self._kb, self._vb = self._kb.index_select(0, idx), self._vb.index_select(0, idx)
        self.keys, self.values = self._kb[:, :, :self._n], self._vb[:, :, :self._n]


def _constrain(logits: torch.Tensor, rows: list[_Row], names) -> torch.Tensor:
    """Logits with every token the name list does not allow next set to -inf (finished rows untouched)."""
    keep = torch.zeros_like(logits, dtype=torch.bool)
    for b, r in enumerate(rows):
        if r.done:
            keep[b] = True
        else:
            keep[b, names.allowed(r.generated)] = True
    return logits.masked_fill(~keep, float("-inf"))


def _sample(logits: torch.Tensor, params: SamplingParams, gens: list[torch.Generator]) -> torch.Tensor:
    """One token per row: greedy at temperature 0, else top-k / top-p sampling with each row's generator."""
    if params.temperature <= 0:
        return logits.argmax(-1).cpu()
    x = logits / params.temperature  # (B, V)
    if params.top_k and params.top_k < x.shape[-1]:
        kth = torch.topk(x, params.top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_x, idx = torch.sort(x, descending=True, dim=-1)
        probs = torch.softmax(sorted_x, -1)
        drop = probs.cumsum(-1) - probs > params.top_p  # keep the smallest set whose mass reaches top_p
        sorted_x = sorted_x.masked_fill(drop, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter(-1, idx, sorted_x)
    probs = F.softmax(x, -1).cpu()
    return torch.stack([torch.multinomial(probs[b], 1, generator=g)[0] for b, g in enumerate(gens)])
