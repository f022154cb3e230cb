"""One decoding row and how its next token is chosen: the name-list constraint and seeded sampling, shared by the
transformers backend's plain and fused decoding loops."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from eagrl.llm.backends.base import Sample, SamplingParams, find_stop


@dataclass
class Row:
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


def constrain(logits: torch.Tensor, rows: list[Row], names) -> torch.Tensor:
    """Logits with every token the name list does not allow next set to -inf (finished rows untouched)."""
    keep = torch.zeros_like(logits, dtype=torch.bool)
    for b, r in enumerate(rows):
        if r.done:
            keep[b] = True
        else:
            keep[b, names.allowed(r.generated)] = True
    return logits.masked_fill(~keep, float("-inf"))


def sample_tokens(logits: torch.Tensor, params: SamplingParams, gens: list[torch.Generator]) -> torch.Tensor:
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
