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

import numpy as np
import torch
from transformers.cache_utils import DynamicCache

from eagrl.llm.backends.base import GenerationBackend, Sample, SamplingParams, sample_seed, seeds_for
from eagrl.llm.backends.prefix_cache import PrefixEntry, PrefixStore, growing_cache
from eagrl.llm.backends.sampling import Row, constrain, sample_tokens
from eagrl.llm.backends.script import run_lockstep
from eagrl.llm.backends.script_loop import ScriptLoop
from eagrl.llm.loading import causal_lm


class TransformersBackend(GenerationBackend):
    def __init__(self, model, tokenizer, *, batch_size: int = 8, prefix_cache_tokens: int = 16384,
                 threads: int | None = None):
        self.model = model.eval()
        self.threads = threads
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        base = causal_lm(model)
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
        rows = [Row(p, sample_seed(s, j), [], []) for p, s in zip(prompt_arrays, seeds) for j in range(n)]
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
    def _decode(self, rows: list[Row], params: SamplingParams) -> None:
        dev = self.device
        cache, mask, lengths, logits = self._prefill([r.prompt for r in rows], reserve=params.max_tokens)
        gens = [torch.Generator().manual_seed(r.seed) for r in rows]
        stop_ids = self._stop_ids(params)
        texts = [self._text_of(r.prompt) for r in rows]
        for step in range(params.max_tokens):
            logp = torch.log_softmax(logits.float(), -1)  # (B, V)
            entropy = torch.special.entr(logp.exp()).sum(-1)  # (B,) what RL's entropy-aware clipping reads; ~free here
            if params.names is not None:  # only names from the list may be sampled; logp stays the model's own
                tokens = sample_tokens(constrain(logits.float(), rows, params.names), params, gens)
                if params.names.end not in stop_ids:
                    stop_ids = stop_ids | {params.names.end}
            else:
                tokens = sample_tokens(logits.float(), params, gens)  # (B,)
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
                ScriptLoop(self, scripts[start:start + self.batch_size]).run()

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
        return growing_cache(self._n_layers)

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
            self.store.put(PrefixEntry(row_ids.astype(np.int64), kv, valid))






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








