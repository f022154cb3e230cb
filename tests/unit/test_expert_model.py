"""ConCare: shapes, masking, vectorised prefixes, per-feature GRUs, DeCov, determinism, attention that finds
the signal, and (slow) the TJH must-show numbers."""
import time

import numpy as np
import pytest
import torch
from support.expert import mean_jaccard, synthetic_cohort

from eagrl.config.expert import ExpertConfig
from eagrl.expert.attention import top_k
from eagrl.expert.fit import build_model
from eagrl.expert.model import ConCare, FeatureGRU, decov_loss, last_valid_index
from eagrl.expert.train import fit, to_tensors

CFG = ExpertConfig(hidden=16, heads=2, ff_hidden=16, dropout=0.0, progress=False, n_boot=0)


def batch(b=5, t=6, f=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, f, generator=g)
    lengths = torch.tensor([t, 1, 3, t - 1, 2])[:b]
    mask = torch.arange(t)[None] < lengths[:, None]
    x = x * mask[..., None]
    return x, mask, torch.randn(b, 2, generator=g)


def model(f=7, seed=0):
    torch.manual_seed(seed)
    return ConCare(f, 2, CFG).eval()


def test_shapes_and_attention_is_a_distribution():
    x, mask, demo = batch()
    out = model()(x, mask, demo)
    assert out.logit.shape == (5,) and out.attention.shape == (5, 7) and out.decov.shape == ()
    assert torch.allclose(out.attention.sum(-1), torch.ones(5), atol=1e-6)
    assert (out.attention > 0).all()
    assert ((out.prob > 0) & (out.prob < 1)).all()
    every = model()(x, mask, demo, every_visit=True)
    assert every.logit.shape == (5, 6) and every.attention.shape == (5, 6, 7)
    assert torch.allclose(every.attention.sum(-1), torch.ones(5, 6), atol=1e-6)


def test_last_valid_index():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert last_valid_index(mask).tolist() == [2, 0, 3]


def test_padding_visits_change_nothing():
    x, mask, demo = batch()
    m = model()
    ref = m(x, mask, demo)
    garbage = torch.randn(5, 4, 7) * 100  # extra padded visits with wild values
    x2 = torch.cat([x, garbage], 1)
    x2[~torch.cat([mask, torch.zeros(5, 4, dtype=torch.bool)], 1)] = 50.0  # padding inside the old range too
    mask2 = torch.cat([mask, torch.zeros(5, 4, dtype=torch.bool)], 1)
    out = m(x2, mask2, demo)
    assert torch.allclose(ref.logit, out.logit, atol=1e-5)
    assert torch.allclose(ref.attention, out.attention, atol=1e-5)


def test_a_stay_does_not_depend_on_its_batch_neighbours():
    x, mask, demo = batch()
    m = model()
    together = m(x, mask, demo).logit
    alone = torch.cat([m(x[i:i + 1, : int(mask[i].sum())], mask[i:i + 1, : int(mask[i].sum())], demo[i:i + 1]).logit
                       for i in range(5)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_every_visit_equals_running_each_prefix():
    """The vectorised all-prefix pass is what a per-prefix loop (the reference code) computes."""
    x, mask, demo = batch()
    m = model()
    every = m(x, mask, demo, every_visit=True)  # (B, T)
    for t in range(x.shape[1]):
        one = m(x[:, : t + 1], mask[:, : t + 1], demo)
        assert torch.allclose(every.logit[:, t], one.logit, atol=1e-5)
        assert torch.allclose(every.attention[:, t], one.attention, atol=1e-5)
    last = m(x, mask, demo)  # after a stay ends, every later position repeats its last-visit output
    assert torch.allclose(every.logit[:, -1], last.logit, atol=1e-5)


def test_feature_gru_is_one_independent_gru_per_feature():
    torch.manual_seed(1)
    f, h = 3, 5
    grus = FeatureGRU(f, h)
    x = torch.randn(4, 6, f)
    out = grus(x)  # (B, T, F, H)
    for j in range(f):
        ref = torch.nn.GRU(1, h, batch_first=True)
        with torch.no_grad():
            ref.weight_ih_l0.copy_(grus.w_ih[j][:, None])
            ref.weight_hh_l0.copy_(grus.w_hh[j].T)
            ref.bias_ih_l0.copy_(grus.b_ih[j])
            ref.bias_hh_l0.copy_(grus.b_hh[j])
        expected, _ = ref(x[:, :, j:j + 1])
        assert torch.allclose(out[:, :, j], expected, atol=1e-6)


def test_time_decay_is_learnable_and_starts_at_0_8():
    m = model()
    assert m.time_attention.rate.requires_grad
    assert torch.allclose(m.time_attention.rate, torch.full((7,), 0.8))
    assert ConCare(7, 2, CFG.model_copy(update={"decay_init": 0.3})).time_attention.rate[0].item() == pytest.approx(0.3)


def test_decov_is_zero_for_decorrelated_and_positive_for_correlated_features():
    n, s, h = 8, 3, 4
    # columns are +-1 patterns orthogonal across the batch with zero mean: the covariance is diagonal
    hadamard = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [1, -1, 1, -1, 1, -1, 1, -1],
                             [1, 1, -1, -1, 1, 1, -1, -1], [1, -1, -1, 1, 1, -1, -1, 1]], dtype=torch.float32).T
    decorrelated = hadamard[:, None, :].expand(n, s, h).contiguous()[:, :, 1:]  # drop the constant column
    assert decov_loss(decorrelated).abs().item() < 1e-6
    correlated = hadamard[:, 1:2, None].expand(n, s, h).contiguous()  # every hidden unit the same signal
    # cov = 8/7 everywhere: 0.5 * (16 - 4) * (8/7)^2 per token
    assert decov_loss(correlated).item() == pytest.approx(0.5 * 12 * (8 / 7) ** 2, rel=1e-5)
    assert decov_loss(correlated[:1]).item() == 0.0  # one stay: no covariance, no penalty


def test_training_is_deterministic_with_a_seed():
    cohort, _ = synthetic_cohort(n_stays=120, seed=3)
    tr, va = cohort.tensors("train"), cohort.tensors("val")
    cfg = CFG.model_copy(update={"max_epochs": 2, "min_epochs": 1, "seed": 5, "dropout": 0.2})
    a = fit(build_model(12, 2, cfg), tr, va, cfg)
    b = fit(build_model(12, 2, cfg), tr, va, cfg)
    assert all(torch.equal(a.model.state_dict()[k], b.model.state_dict()[k]) for k in a.model.state_dict())
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    c = fit(build_model(12, 2, cfg.model_copy(update={"seed": 6})), tr, va, cfg.model_copy(update={"seed": 6}))
    assert not torch.equal(a.model.head.weight, c.model.head.weight)


def test_attention_recovers_the_features_the_outcome_depends_on():
    """Issue 3: C_exp recovers the informative set (target mean Jaccard >= 0.6).

    Default architecture and training (H=64, 4 heads, early stopping on validation AUPRC); the mean over
    the first three seeds, because one seed alone ranges from about 0.45 to 0.9 (see the report).
    Chance level (3 of 12 at random) is about 0.16.
    """
    scores = []
    for seed in (0, 1, 2):
        cohort, truth = synthetic_cohort(seed=seed)  # label depends on 3 of 12 features
        cfg = ExpertConfig(top_k=3, n_boot=0, progress=False, seed=seed)
        tr, va, te = (cohort.tensors(k) for k in ("train", "val", "test"))
        m = fit(build_model(len(cohort.feature_names), 2, cfg), tr, va, cfg).model.eval()
        t = to_tensors(te)
        with torch.no_grad():
            attention = m(t["x"], t["mask"], t["demo"]).attention.numpy()  # (B, F)
        scores.append(mean_jaccard(top_k(attention, cohort.feature_names, 3), truth))
        weight = dict(zip(cohort.feature_names, attention.mean(0)))
        distractors = [n for n in cohort.feature_names if n not in truth]
        assert min(weight[n] for n in truth) > np.mean([weight[n] for n in distractors]), (seed, weight)
        decoys = distractors[:3]  # a wrong "truth" is not recovered: the check can fail
        assert mean_jaccard(top_k(attention, cohort.feature_names, 3), decoys) < 0.3
    print(f"C_exp mean Jaccard per seed {np.round(scores, 3).tolist()}, mean {np.mean(scores):.3f}")
    assert np.mean(scores) >= 0.6, scores


@pytest.mark.slow
def test_tjh_mortality_meets_the_published_range(tmp_path):
    """Issue 3: TJH mortality, stratified patient-level 70/10/20 with seed 42, default config:
    test AUROC >= 0.97 and AUPRC >= 0.95 with intervals, in under 5 minutes on 2 cores (C_exp's occlusion
    included)."""
    from support.expert import tjh_cohort

    from eagrl.expert.fit import train_expert

    start = time.perf_counter()
    cohort = tjh_cohort()
    result = train_expert(cohort, ExpertConfig(progress=False), tmp_path)
    seconds = time.perf_counter() - start
    m = result.metrics
    print({k: m[k] for k in ("test_auroc", "test_auroc_ci", "test_auprc", "test_auprc_ci", "test_f1", "test_brier",
                             "best_epoch", "epochs", "c_exp_reference_share", "c_exp_reference_jaccard",
                             "attention_entropy_median", "c_exp_size_mean")}, f"{seconds:.0f} s")
    assert m["test_auroc"] >= 0.97 and m["test_auprc"] >= 0.95, m
    # issue 28: C_exp names LDH, lymphocyte % or hs-CRP (Yan et al. 2020) in most stays; 5 of 73 at random: 0.19
    assert m["c_exp_reference_share"] >= 0.6, m["c_exp_reference_share"]
    for k in ("test_auroc", "test_auprc"):
        assert m[f"{k}_ci"][0] <= m[k] <= m[f"{k}_ci"][1]
    assert seconds < 300
