"""One training epoch of the vectorised ConCare against a per-visit-prefix loop, same weights.

The public reference implementations (pyehr ``models/concare.py``) compute the whole network once for
every visit prefix x[:, :t] to get a prediction at each visit, which is quadratic in the number of visits.
The baseline below does exactly that with this project's layers (so the only difference is the prefix
loop); the vectorised model gives all T prefix predictions in one pass (``every_visit=True``).

Both train one epoch from the same weights, on the same batches, with the reference's objective: BCE of
every valid visit's prediction against the stay label. Dropout and DeCov are off here so the two paths
optimise the identical function (DeCov's batch differs: the reference recomputes ended stays at every later
prefix, the vectorised pass keeps only distinct queries); both still compute DeCov in the forward pass.
The script checks that the predictions agree to 1e-5 before training and that the weights still agree
after the epoch, then prints the times and the ratio. It also times the last-visit path that
``eagrl.expert.train`` uses (one query per stay), against the same prefix loop.

    .venv/bin/python benchmarks/bench_expert.py              # TJH train split (73 features, up to 13 visits)
    .venv/bin/python benchmarks/bench_expert.py --synthetic --stays 512 --visits 24

``--planted`` measures C_exp instead (issue 28): the expert (the profile's config) trained on the planted-cause
cohort (``eagrl.data.synthetic``, default recipe, ``--seed`` to vary it), then the mean Jaccard of C_exp with the
planted causes, beside the final attention's own top-k; the last line is one JSON object.

    .venv/bin/python benchmarks/bench_expert.py --planted [--profile default] [--seed 0] \
        [--set attention_entropy_weight=0.2]

It also prints every C_exp rule (attention, occlusion, their blend; top-k or adaptive mass) on the same trained
expert, so one run compares them.
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from eagrl.config.expert import ExpertConfig
from eagrl.expert.model import ConCare
from eagrl.expert.train import batches, seed_everything, to_tensors


def prefix_loop(model: ConCare, x, mask, demo) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's way: rerun the network on every prefix x[:, :t], keep its last-visit output."""
    logits, decov = [], 0.0
    t_max = x.shape[1]
    for t in range(1, t_max + 1):
        out = model(x[:, :t], mask[:, :t], demo)  # recomputes GRUs and every attention on t visits
        logits.append(out.logit)
        decov = decov + out.decov
    return torch.stack(logits, dim=1), decov / t_max  # (B, T), ()


def vectorised(model: ConCare, x, mask, demo) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(x, mask, demo, every_visit=True)
    return out.logit, out.decov  # (B, T), ()


def last_visit(model: ConCare, x, mask, demo) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(x, mask, demo)
    return out.logit[:, None], out.decov  # (B, 1), ()


def train_epoch(model: ConCare, data: dict, cfg: ExpertConfig, forward, per_visit: bool = True) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    start = time.perf_counter()
    for b in batches(data, cfg.batch_size, gen):
        logits, decov = forward(model, b["x"], b["mask"], b["demo"])
        if per_visit:  # every valid visit predicts the stay's label
            y = b["y"][:, None].expand_as(logits)
            bce = F.binary_cross_entropy_with_logits(logits[b["mask"]], y[b["mask"]])
        else:
            bce = F.binary_cross_entropy_with_logits(logits[:, 0], b["y"])
        loss = bce + cfg.decov_weight * decov
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def load_data(args) -> dict[str, np.ndarray]:
    if not args.synthetic:
        try:
            from eagrl.config import DataConfig
            from eagrl.data.cohort import build_cohort
            from eagrl.data.sources import get_source

            cfg = DataConfig(dataset="tjh", task="mortality")
            src = get_source("tjh")
            return build_cohort(src.to_raw(src.read(src.default_path()), cfg), cfg).tensors("train")
        except Exception as exc:  # noqa: BLE001 - a benchmark falls back to data of the same shape
            print(f"TJH unavailable ({exc}); using synthetic data")
    rng = np.random.default_rng(0)
    n, t, f = args.stays, args.visits, args.features
    lengths = rng.integers(2, t + 1, n)
    mask = np.arange(t)[None, :] < lengths[:, None]
    return {
        "x": (rng.normal(size=(n, t, f)) * mask[:, :, None]).astype(np.float32),
        "mask": mask,
        "demo": rng.normal(size=(n, 2)).astype(np.float32),
        "y": (rng.random(n) < 0.4).astype(np.float32),
    }


def planted(profile: str, seed: int, overrides: dict) -> None:
    """Train on the planted-cause cohort; print C_exp's overlap with the causes, and the attention top-k's."""
    import json
    import tempfile

    from eagrl.config import DataConfig, load_config
    from eagrl.data import synthetic
    from eagrl.data.cohort import build_cohort
    from eagrl.expert.attention import adaptive_k, jaccard_with, observed_features, occlusion, top_k, train_quantiles
    from eagrl.expert.fit import load_expert, train_expert
    from eagrl.expert.train import predict

    ehr = synthetic.generate(synthetic.default_recipe().model_copy(update={"seed": seed}))
    cohort = build_cohort(ehr.to_raw(), DataConfig(dataset="synthetic", task="mortality"))
    cfg = load_config(profile, {f"expert.{k}": v for k, v in overrides.items()}).expert
    cfg = cfg.model_copy(update={"progress": False, "n_boot": 0, "reference_features": {"synthetic": ehr.planted}})
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-expert-") as tmp:
        m = train_expert(cohort, cfg, tmp).metrics
        model, _, _ = load_expert(tmp)
    seconds = time.perf_counter() - start
    everyone = cohort.tensors(None)
    _, attention = predict(model, everyone)
    allowed = observed_features(cohort)
    baseline = jaccard_with(top_k(attention, cohort.feature_names, cfg.top_k, allowed), ehr.planted)
    occ = occlusion(model, everyone, train_quantiles(cohort, cfg.occlusion_quantiles), cfg.batch_size)
    rules = {}  # every C_exp rule on this same trained expert: mean Jaccard with the causes, mean size
    for score_name, score in (("attention", attention), ("occlusion", occ), ("blend0.5", (attention + occ) / 2)):
        for mass in (None, 0.5, 0.7, 0.8, 0.9):
            c = adaptive_k(score, cohort.feature_names, cfg.top_k, mass, allowed)
            rules[f"{score_name}/mass={mass}"] = [round(float(jaccard_with(c, ehr.planted).mean()), 4),
                                                  round(float(np.mean([len(x) for x in c])), 2)]
    out = {"bench": "expert_c_exp_planted", "profile": profile, "recipe_seed": seed, "causes": ehr.planted,
           "n_stays": len(cohort.stays), "c_exp_score": cfg.c_exp_score, "c_exp_blend": cfg.c_exp_blend,
           "c_exp_mass": cfg.c_exp_mass, "top_k": cfg.top_k,
           "c_exp_jaccard": round(m["c_exp_reference_jaccard"], 4),
           "c_exp_holds_a_cause": round(m["c_exp_reference_share"], 4),
           "attention_top_k_jaccard": round(float(baseline.mean()), 4),
           "c_exp_size_mean": round(m["c_exp_size_mean"], 3),
           "c_exp_attention_mass_mean": round(m["c_exp_attention_mass_mean"], 4),
           "attention_entropy_median": round(m["attention_entropy_median"], 4),
           "attention_entropy_p25_p75": [round(m["attention_entropy_p25"], 4), round(m["attention_entropy_p75"], 4)],
           "test_auroc": round(m["test_auroc"], 4), "test_auprc": round(m["test_auprc"], 4),
           "seconds": round(seconds, 1), "expert_overrides": overrides,
           "rules_jaccard_size": rules}
    print(f"planted causes {ehr.planted}; expert test AUROC {out['test_auroc']}, AUPRC {out['test_auprc']}")
    print(f"C_exp ({cfg.c_exp_score}, mass {cfg.c_exp_mass}, k<={cfg.top_k}): mean Jaccard with the causes "
          f"{out['c_exp_jaccard']} (attention top-{cfg.top_k}: {out['attention_top_k_jaccard']}), "
          f"mean size {out['c_exp_size_mean']}")
    for rule, (jac, size) in rules.items():
        print(f"  {rule:24s} Jaccard {jac:.3f}  mean size {size:.2f}")
    print(f"final attention entropy median {out['attention_entropy_median']} nats "
          f"(uniform {np.log(len(cohort.feature_names)):.2f}); {seconds:.0f} s")
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--planted", action="store_true", help="C_exp's overlap with the planted causes (issue 28)")
    ap.add_argument("--profile", default="default", help="--planted: the profile whose expert config is trained")
    ap.add_argument("--seed", type=int, default=0, help="--planted: the synthetic recipe's seed")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="--planted: an expert config override, e.g. attention_entropy_weight=0.2 (repeatable)")
    ap.add_argument("--synthetic", action="store_true", help="random data instead of the TJH train split")
    ap.add_argument("--stays", type=int, default=256)
    ap.add_argument("--visits", type=int, default=13)
    ap.add_argument("--features", type=int, default=73)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.planted:
        from eagrl.config import parse_override

        planted(args.profile, args.seed, dict(parse_override(o) for o in args.set))
        return

    arrays = load_data(args)
    data = to_tensors(arrays)
    n, t_max, f = data["x"].shape
    cfg = ExpertConfig(hidden=args.hidden, ff_hidden=args.hidden, dropout=0.0, decov_weight=0.0, progress=False)
    seed_everything(cfg.seed)
    base = ConCare(f, data["demo"].shape[1], cfg)
    print(f"data: {n} stays, up to {t_max} visits (median {int(np.median(arrays['mask'].sum(1)))}), "
          f"{f} features; H={cfg.hidden}, batch {cfg.batch_size}, {torch.get_num_threads()} threads")

    # Same weights, same outputs: every valid visit's prediction, in eval mode.
    model = copy.deepcopy(base).eval()
    with torch.no_grad():
        loop_logit, _ = prefix_loop(model, data["x"], data["mask"], data["demo"])
        vec_logit, _ = vectorised(model, data["x"], data["mask"], data["demo"])
    m = data["mask"]
    diff = (torch.sigmoid(loop_logit[m]) - torch.sigmoid(vec_logit[m])).abs().max().item()
    print(f"max |p_loop - p_vectorised| over {int(m.sum())} visit predictions: {diff:.2e}")
    assert diff <= 1e-5, "the vectorised model disagrees with the prefix loop"

    # One training epoch each, from the same weights on the same batches.
    m_loop, m_vec, m_last = (copy.deepcopy(base) for _ in range(3))
    t_loop = train_epoch(m_loop, data, cfg, prefix_loop)
    t_vec = train_epoch(m_vec, data, cfg, vectorised)
    t_last = train_epoch(m_last, data, cfg, last_visit, per_visit=False)
    w_diff = max((a - b).abs().max().item() for a, b in zip(m_loop.parameters(), m_vec.parameters()))
    print(f"max |w_loop - w_vectorised| after the epoch: {w_diff:.2e}")
    print(f"one epoch, prediction at every visit:  prefix loop {t_loop:7.2f} s   vectorised {t_vec:6.2f} s   "
          f"ratio {t_loop / t_vec:5.1f}x")
    print(f"one epoch, prediction at the last visit (eagrl's training): {t_last:6.2f} s   "
          f"ratio to the prefix loop {t_loop / t_last:5.1f}x")


if __name__ == "__main__":
    main()
