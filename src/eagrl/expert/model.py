"""ConCare (Ma et al., AAAI 2020), vectorised over stays, visits and features.

Shapes: B stays, T visits (left-aligned, padded after each stay's length), F features, H hidden,
S = F + 1 tokens (the F feature tokens, then the demographic token).

1. :class:`FeatureGRU`: F independent GRU(1, H), one per feature, stepped together (one batched matmul per
   visit for all features and stays, no loop over features).
2. :class:`TimeAwareAttention`: per feature, the hidden state at the query visit (the stay's last *valid*
   visit) attends over that feature's earlier states; the score sigmoid(q.k) is divided by
   sigmoid(rate) * log(e + 1 - sigmoid(q.k)) * (visits back + 1), with a learnable rate per feature.
3. Demographics -> tanh(Linear) -> one more token; :class:`FeatureMixer` (multi-head self-attention across
   the S tokens, residual + LayerNorm, feed-forward, residual + LayerNorm).
4. :class:`FinalAttention`: the demographic token queries the F feature tokens; its weights (B, F) are the
   expert attention that ranks a stay's features; the pooled vector -> Linear -> logit.
5. :func:`decov_loss` on the per-token self-attention context across the batch.

The public reference computes the whole network once per visit prefix, which is quadratic in visits.
Here one pass gives the prediction at the last valid visit; ``every_visit=True`` gives the predictions at
all T prefixes in the same single pass (queries at every visit, causal masks), equal to the prefix loop
(``benchmarks/bench_expert.py`` checks it and times both).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eagrl.config.expert import ExpertConfig


@dataclass
class ConCareOutput:
    logit: Tensor  # (B,) at the last valid visit, or (B, T) at every visit with every_visit=True
    attention: Tensor  # (B, F) final attention over the feature tokens, or (B, T, F); rows sum to 1
    decov: Tensor  # () DeCov of the self-attention context across the batch's queries, averaged over tokens

    @property
    def prob(self) -> Tensor:
        return torch.sigmoid(self.logit)


def last_valid_index(mask: Tensor) -> Tensor:
    """(B, T) bool -> (B,) position of each stay's last valid visit (0 when none is valid)."""
    t = torch.arange(mask.shape[1], device=mask.device)  # (T,)
    return (mask.long() * t).amax(dim=1)  # (B,)


def decov_loss(context: Tensor) -> Tensor:
    """DeCov (Cogswell et al. 2016) of (..., B, S, H) representations: for each token, the squared
    off-diagonal covariances of its H dimensions across the B stays, halved; averaged over tokens and
    any leading dimensions. Zero when every token's dimensions are uncorrelated across the batch."""
    b = context.shape[-3]
    if b < 2:
        return context.new_zeros(())
    c = context - context.mean(dim=-3, keepdim=True)  # (..., B, S, H)
    cov = torch.einsum("...bsh,...bsg->...shg", c, c) / (b - 1)  # (..., S, H, H)
    diag = torch.diagonal(cov, dim1=-2, dim2=-1)  # (..., S, H)
    off = cov.pow(2).sum(dim=(-2, -1)) - diag.pow(2).sum(dim=-1)  # (..., S)
    return 0.5 * off.mean()


class FeatureGRU(nn.Module):
    """F independent GRU(1, H) (gates r, z, n as ``nn.GRU``), stepped together over the visits."""

    def __init__(self, n_features: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        bound = 1.0 / math.sqrt(hidden)
        self.w_ih = nn.Parameter(torch.empty(n_features, 3 * hidden).uniform_(-bound, bound))  # (F, 3H)
        self.w_hh = nn.Parameter(torch.empty(n_features, hidden, 3 * hidden).uniform_(-bound, bound))  # (F, H, 3H)
        self.b_ih = nn.Parameter(torch.empty(n_features, 3 * hidden).uniform_(-bound, bound))  # (F, 3H)
        self.b_hh = nn.Parameter(torch.empty(n_features, 3 * hidden).uniform_(-bound, bound))  # (F, 3H)

    def forward(self, x: Tensor) -> Tensor:
        b, _, f = x.shape
        gi = x.permute(1, 2, 0).unsqueeze(-1) * self.w_ih[:, None] + self.b_ih[:, None]  # (T, F, B, 3H)
        h = x.new_zeros(f, b, self.hidden)  # (F, B, H)
        states = []
        # unbind once: indexing gi[step] inside the loop would make backward allocate T full-size zero grads
        for gi_t in gi.unbind(0):  # recurrence: sequential in visits, parallel in stays and features
            gi_r, gi_z, gi_n = gi_t.chunk(3, dim=-1)  # each (F, B, H)
            gh = torch.baddbmm(self.b_hh[:, None], h, self.w_hh)  # (F, B, 3H)
            gh_r, gh_z, gh_n = gh.chunk(3, dim=-1)  # each (F, B, H)
            r = torch.sigmoid(gi_r + gh_r)
            z = torch.sigmoid(gi_z + gh_z)
            n = torch.tanh(gi_n + r * gh_n)
            h = (1 - z) * n + z * h  # (F, B, H)
            states.append(h)
        return torch.stack(states).permute(2, 0, 1, 3)  # (B, T, F, H)


class TimeAwareAttention(nn.Module):
    """Per feature: attention from a query visit over the feature's GRU states up to that visit."""

    def __init__(self, n_features: int, hidden: int, key_dim: int, decay_init: float):
        super().__init__()
        bound = 1.0 / math.sqrt(hidden)  # nn.Linear's default init, per feature
        self.w_q = nn.Parameter(torch.empty(n_features, hidden, key_dim).uniform_(-bound, bound))  # (F, H, D)
        self.w_k = nn.Parameter(torch.empty(n_features, hidden, key_dim).uniform_(-bound, bound))  # (F, H, D)
        self.rate = nn.Parameter(torch.full((n_features,), float(decay_init)))  # (F,)

    def forward(self, h: Tensor, mask: Tensor, query_pos: Tensor) -> Tensor:
        """h (B, T, F, H), mask (B, T), query_pos (B, Q) -> (B, Q, F, H): one summary per query visit."""
        b, t, f, _ = h.shape
        q_states = torch.gather(h, 1, query_pos[:, :, None, None].expand(-1, -1, f, h.shape[-1]))  # (B, Q, F, H)
        q = torch.einsum("bqfh,fhd->bfqd", q_states, self.w_q)  # (B, F, Q, D)
        k = torch.einsum("btfh,fhd->bftd", h, self.w_k)  # (B, F, T, D)
        sim = torch.sigmoid(q @ k.transpose(-1, -2))  # (B, F, Q, T)
        pos = torch.arange(t, device=h.device)  # (T,)
        back = query_pos[:, :, None] - pos[None, None, :]  # (B, Q, T) visits between key and query
        valid = (back >= 0) & mask[:, None, :]  # (B, Q, T): causal and not padding
        valid = valid | (back == 0)  # the query visit itself always counts
        delta = (back.clamp(min=0) + 1).to(h.dtype)[:, None]  # (B, 1, Q, T)
        rate = torch.sigmoid(self.rate)[None, :, None, None]  # (1, F, 1, 1)
        score = sim / (rate * torch.log(math.e + (1 - sim)) * delta)  # (B, F, Q, T)
        score = score.masked_fill(~valid[:, None], float("-inf"))
        a = torch.softmax(score, dim=-1)  # (B, F, Q, T)
        return torch.einsum("bfqt,btfh->bqfh", a, h)  # (B, Q, F, H)


class FeatureMixer(nn.Module):
    """Multi-head self-attention across tokens and a feed-forward block, each with residual + LayerNorm."""

    def __init__(self, hidden: int, heads: int, ff_hidden: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, ff_hidden), nn.ReLU(), nn.Linear(ff_hidden, hidden))
        self.norm2 = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, S, H) -> (out (N, S, H), context (N, S, H)): context is the heads' output before the
        output projection, the per-token representation DeCov decorrelates."""
        n, s, hid = x.shape
        q, k, v = self.qkv(x).view(n, s, 3, self.heads, hid // self.heads).permute(2, 0, 3, 1, 4)  # (N, heads, S, Dh)
        context = F.scaled_dot_product_attention(q, k, v)  # (N, heads, S, Dh)
        context = context.transpose(1, 2).reshape(n, s, hid)  # (N, S, H)
        x = self.norm1(x + self.drop(self.proj(context)))  # (N, S, H)
        x = self.norm2(x + self.drop(self.ff(x)))  # (N, S, H)
        return x, context


class FinalAttention(nn.Module):
    """The demographic token queries the feature tokens; returns the pooled vector and the weights."""

    def __init__(self, hidden: int):
        super().__init__()
        self.w_q = nn.Linear(hidden, hidden)
        self.w_k = nn.Linear(hidden, hidden)
        self.w_v = nn.Linear(hidden, hidden)
        self.scale = 1.0 / math.sqrt(hidden)

    def forward(self, features: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        """features (N, F, H), query (N, H) -> (pooled (N, H), weights (N, F))."""
        e = torch.einsum("nfh,nh->nf", self.w_k(features), self.w_q(query)) * self.scale  # (N, F)
        a = torch.softmax(e, dim=-1)  # (N, F)
        return torch.einsum("nf,nfh->nh", a, self.w_v(features)), a


class ConCare(nn.Module):
    def __init__(self, n_features: int, demo_dim: int = 2, cfg: ExpertConfig | None = None):
        super().__init__()
        cfg = cfg or ExpertConfig()
        if n_features < 1 or demo_dim < 1:
            raise ValueError(f"ConCare needs at least one feature and one demographic, got {n_features} and {demo_dim}")
        self.n_features, self.demo_dim, self.hidden = n_features, demo_dim, cfg.hidden
        self.gru = FeatureGRU(n_features, cfg.hidden)
        self.time_attention = TimeAwareAttention(n_features, cfg.hidden, cfg.time_hidden, cfg.decay_init)
        self.demo_proj = nn.Linear(demo_dim, cfg.hidden)
        self.mixer = FeatureMixer(cfg.hidden, cfg.heads, cfg.ff_hidden, cfg.dropout)
        self.final_attention = FinalAttention(cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden, 1)

    def encode(self, x: Tensor, mask: Tensor, query_pos: Tensor) -> Tensor:
        """x (B, T, F), mask (B, T), query_pos (B, Q) -> (B, Q, F, H): each feature's token at each query visit.

        Feature f's token depends on x[..., f] only (its own GRU and time-aware attention), so a token of one
        feature can be swapped for another series' without rerunning the others (the occlusion does)."""
        return self.time_attention(self.gru(x), mask, query_pos)

    def readout(self, feats: Tensor, demo: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """feats (N, F, H) feature tokens, demo (N, demo_dim) -> logit (N,), final attention (N, F), and the
        self-attention context (N, S, H) that DeCov reads."""
        f = feats.shape[1]
        demo_tok = torch.tanh(self.demo_proj(demo))[:, None]  # (N, 1, H)
        tokens = self.drop(torch.cat([feats, demo_tok], dim=1))  # (N, S, H)
        mixed, context = self.mixer(tokens)  # (N, S, H) each
        pooled, attn = self.final_attention(mixed[:, :f], mixed[:, f])  # (N, H), (N, F)
        return self.head(self.drop(pooled)).squeeze(-1), attn, context

    def forward(self, x: Tensor, mask: Tensor, demo: Tensor, every_visit: bool = False) -> ConCareOutput:
        """x (B, T, F) normalised and imputed, mask (B, T) bool, demo (B, demo_dim).

        Padding visits (mask False) never change the output: the GRU is causal, keys after the query are
        masked, and the query is the last valid visit (or each visit, with ``every_visit``).
        """
        b, t, f = x.shape
        mask = mask.bool()
        last = last_valid_index(mask)[:, None]  # (B, 1)
        if every_visit:  # the prediction with the visits up to t; after a stay ends, its last one
            query_pos = torch.minimum(torch.arange(t, device=x.device)[None, :], last)  # (B, T)
        else:
            query_pos = last  # (B, 1)
        feats = self.encode(x, mask, query_pos)  # (B, Q, F, H)
        # Only distinct queries go on: visits up to each stay's last (padding repeats the last one).
        distinct = torch.arange(query_pos.shape[1], device=x.device)[None, :] <= last  # (B, Q)
        stay = torch.arange(b, device=x.device)[:, None].expand_as(distinct)[distinct]  # (N,) stay of each query
        logit, attn, context = self.readout(feats[distinct], demo[stay])  # (N,), (N, F), (N, S, H)
        decov = decov_loss(context)  # () across the N representations of the batch
        if not every_visit:
            return ConCareOutput(logit, attn, decov)
        logit_bt = logit.new_zeros(b, t).masked_scatter(distinct, logit)  # (B, T)
        attn_bt = attn.new_zeros(b, t, f).masked_scatter(distinct[..., None], attn)  # (B, T, F)
        logit_bt = logit_bt.gather(1, query_pos)  # (B, T) padding repeats the last visit
        attn_bt = attn_bt.gather(1, query_pos[..., None].expand(-1, -1, f))  # (B, T, F)
        return ConCareOutput(logit_bt, attn_bt, decov)
