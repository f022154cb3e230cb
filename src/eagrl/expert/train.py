"""Training loop for the expert: Adam on BCE + w*DeCov (- e*attention entropy), early stopping on validation AUPRC.

Inputs are the arrays of :meth:`Cohort.tensors` (``x``, ``mask``, ``demo``, ``y``). ``fit`` is seeded: on
CPU two runs with the same config give identical weights. ``on_epoch`` receives each epoch's record
(``{"epoch", "train_loss", "val_auprc", ...}``), which is where a caller logs to MLflow.
"""
from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from eagrl.config.expert import ExpertConfig
from eagrl.errors import ConfigError
from eagrl.expert.model import ConCare
from eagrl.metrics import auprc, auroc

Arrays = dict[str, np.ndarray]
_KEYS = ("x", "mask", "demo", "y")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"expert.device={name!r} but no CUDA device is available; use \"auto\" or \"cpu\"")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("expert.device='mps' but MPS is not available; use \"auto\" or \"cpu\"")
    return torch.device(name)


def to_tensors(arrays: Arrays, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    out = {k: torch.as_tensor(arrays[k]).to(device) for k in _KEYS}
    out["mask"] = out["mask"].bool()
    out["x"], out["demo"], out["y"] = out["x"].float(), out["demo"].float(), out["y"].float()
    return out


def batches(
    data: dict[str, Tensor], batch_size: int, generator: torch.Generator | None = None
) -> Iterator[dict[str, Tensor]]:
    """Mini-batches (shuffled when a generator is given), each trimmed to its longest stay."""
    n = data["y"].shape[0]
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for lo in range(0, n, batch_size):
        idx = order[lo:lo + batch_size].to(data["y"].device)
        mask = data["mask"][idx]  # (b, T)
        t = int(mask.any(0).nonzero().max()) + 1 if mask.any() else 1
        yield {"x": data["x"][idx, :t], "mask": mask[:, :t], "demo": data["demo"][idx], "y": data["y"][idx]}


@torch.no_grad()
def predict(model: ConCare, arrays: Arrays, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (B,) at the last valid visit and final-attention weights (B, F), in input order."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    probs, attn = [], []
    for b in batches(to_tensors(arrays, device), batch_size):
        out = model(b["x"], b["mask"], b["demo"])
        probs.append(out.prob.cpu())
        attn.append(out.attention.cpu())
    model.train(was_training)
    if not probs:
        return np.zeros(0, np.float32), np.zeros((0, model.n_features), np.float32)
    return torch.cat(probs).numpy(), torch.cat(attn).numpy()


@dataclass
class FitResult:
    model: ConCare  # with the best epoch's weights restored
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


def _val_record(model: ConCare, val: Arrays, cfg: ExpertConfig) -> dict[str, float]:
    p, _ = predict(model, val, batch_size=max(cfg.batch_size, 256))
    y = val["y"].astype(np.float64)
    eps = 1e-7
    loss = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
    return {"val_loss": loss, "val_auroc": auroc(y, p), "val_auprc": auprc(y, p)}


def fit(
    model: ConCare,
    train: Arrays,
    val: Arrays | None,
    cfg: ExpertConfig,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``model`` in place; keep the epoch with the best validation AUPRC (ties: lower val loss),
    among epochs from ``cfg.min_epochs`` on (the first epochs' near-constant scores can rank a small
    validation set well by chance).

    Without validation stays (``val`` None or empty) every epoch runs and the last one is kept.
    """
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model.to(device)
    data = to_tensors(train, device)
    has_val = val is not None and len(val["y"]) > 0
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    best_key, best_state, best_epoch, stale = (-np.inf, -np.inf), None, 0, 0
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(range(1, cfg.max_epochs + 1), desc="expert", unit="epoch", disable=not cfg.progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        sums = {"bce": 0.0, "decov": 0.0, "n": 0}
        for b in batches(data, cfg.batch_size, gen):
            if b["y"].shape[0] < 2:  # DeCov needs two stays; a lone leftover stay joins no batch
                continue
            out = model(b["x"], b["mask"], b["demo"])
            bce = F.binary_cross_entropy_with_logits(out.logit, b["y"])
            loss = bce + cfg.decov_weight * out.decov
            if cfg.attention_entropy_weight:  # a spread final attention, against its collapse onto one feature
                ent = -(out.attention * out.attention.clamp_min(1e-12).log()).sum(-1).mean()
                loss = loss - cfg.attention_entropy_weight * ent
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            k = b["y"].shape[0]
            sums["bce"] += bce.item() * k
            sums["decov"] += out.decov.item() * k
            sums["n"] += k
        n = max(sums["n"], 1)
        record: dict[str, float] = {"epoch": epoch, "train_bce": sums["bce"] / n, "train_decov": sums["decov"] / n}
        record["train_loss"] = record["train_bce"] + cfg.decov_weight * record["train_decov"]
        if has_val:
            record.update(_val_record(model, val, cfg))
            key = (record["val_auprc"] if np.isfinite(record["val_auprc"]) else -np.inf, -record["val_loss"])
        else:
            key = (float(epoch), 0.0)
        record["epoch_seconds"] = time.perf_counter() - t0
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
        if key > best_key and (epoch >= cfg.min_epochs or not has_val):
            best_key, best_epoch, stale = key, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_auprc=f"{record.get('val_auprc', float('nan')):.3f}",
                        best=best_epoch)
        if has_val and stale >= cfg.patience and epoch >= cfg.min_epochs:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(model=model, history=history, best_epoch=best_epoch, seconds=time.perf_counter() - start)
