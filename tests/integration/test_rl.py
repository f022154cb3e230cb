"""Stage 2: the eps(tau) maths, the clipped objective and its gradient, the bounds reaching TRL's loss, the
structured rollouts (masks, entropies, seeds), and training (variants, checkpoints, resume) with the tiny model."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from support.llm import tjh_cohort

from eagrl.config.llm import GenerationConfig, ModelConfig
from eagrl.config.rl import RLConfig
from eagrl.llm.backends.transformers_backend import TransformersBackend
from eagrl.llm.structured import NO_SPELLINGS, YES_SPELLINGS
from eagrl.rl.clip import adaptive_epsilon, clipped_objective, trajectory_entropy

NAN = math.nan
GEN = GenerationConfig(depth=1, max_subquestion_tokens=6, max_answer_tokens=6, max_features_tokens=10, compact=True,
                       max_prompt_tokens=512)


# ====================================================================== eps(tau) and H(tau)
def test_eps_is_min_max_scaled_entropy_over_the_batch():
    eps = adaptive_epsilon(torch.tensor([1.0, 2.0, 3.0, 1.5]), 0.2, 0.4)
    assert torch.allclose(eps, torch.tensor([0.2, 0.3, 0.4, 0.25]))
    # equal entropies (or a single trajectory): the midpoint for all
    assert torch.allclose(adaptive_epsilon(torch.tensor([0.7, 0.7]), 0.2, 0.4), torch.tensor([0.3, 0.3]))
    assert torch.allclose(adaptive_epsilon(torch.tensor([5.0]), 0.1, 0.5), torch.tensor([0.3]))
    # a trajectory without an entropy gets the midpoint; the others are scaled among themselves
    eps = adaptive_epsilon(torch.tensor([0.0, NAN, 2.0]), 0.2, 0.4)
    assert torch.allclose(eps, torch.tensor([0.2, 0.3, 0.4]))


def test_trajectory_entropy_reads_the_feature_span_and_skips_inserted_tokens():
    ent = [9.0, 1.0, 3.0, NAN, 5.0, 7.0]
    mask = [False, True, True, False, True, True]
    assert trajectory_entropy(ent, mask, span=(1, 4)) == pytest.approx(2.0)  # tokens 1, 2 (3 is inserted)
    assert trajectory_entropy(ent, mask, span=None) == pytest.approx(4.0)  # all model-written: 1, 3, 5, 7
    assert trajectory_entropy(ent, mask, span=(3, 4)) == pytest.approx(4.0)  # empty span: whole response
    # a backend without entropies: the sampled tokens' surprisal stands in
    assert trajectory_entropy([NAN] * 3, [True, True, False], logprobs=[-1.0, -3.0, 0.0]) == pytest.approx(2.0)
    assert math.isnan(trajectory_entropy([NAN, NAN], [True, False]))


# ====================================================================== group advantages with a floor on the std
def test_a_groups_advantages_are_scaled_by_its_std_or_the_floor_whichever_is_larger():
    from trl.trainer.utils import nanstd

    from eagrl.rl.trainer import floored_group_advantages

    rewards = torch.tensor([0.990, 0.992, 0.991, 0.993,   # R_cls saturated: differences of thousandths
                            0.2, 0.9, 0.3, 0.8,           # a group that disagrees about the label
                            0.5, 0.5, 0.5, 0.5,           # no advantage
                            0.1, NAN, 0.3, 0.2])          # one unscorable response
    adv, floored = floored_group_advantages(rewards, 4, 0.05)
    g = adv.view(4, 4)
    r = rewards.view(4, 4)
    assert torch.allclose(g[0], (r[0] - r[0].mean()) / 0.05)  # std 0.0013 < 0.05: |A| <= 0.03, not TRL's ~1
    assert g[0].abs().max() < 0.05
    trl = (r[1] - r[1].mean()) / (nanstd(r[1]) + 1e-4)  # std 0.35 > 0.05: TRL's advantages
    assert torch.allclose(g[1], trl, atol=1e-3)
    assert torch.equal(g[2], torch.zeros(4))
    assert g[3, 1] == 0 and torch.allclose(g[3, [0, 2, 3]], torch.tensor([-0.1, 0.1, 0.0]) / 0.1, atol=1e-5)
    assert floored == pytest.approx(0.5)  # the saturated and the tied group
    # floor 0 is TRL's group normalisation but for the 1e-4
    adv0, _ = floored_group_advantages(rewards[4:8], 4, 0.0)
    assert torch.allclose(adv0, trl, atol=1e-3)


# ====================================================================== the clipped objective
def test_clipped_objective_matches_a_hand_computed_example():
    ratios = torch.tensor([[0.7, 1.0, 1.3, 1.5], [0.7, 0.9, 1.2, 1.5]])
    adv = torch.tensor([1.0, -2.0])
    eps_high = torch.tensor([0.25, 0.4])
    loss = clipped_objective(ratios.log(), adv, 0.2, eps_high)
    # A > 0: -min(r, clip(r, 0.8, 1.25)) = [-0.7, -1.0, -1.25, -1.25]
    # A < 0: -min(-2r, -2 clip(r, 0.8, 1.4)) = 2 max(r, clip(r)) = [1.6, 1.8, 2.4, 3.0]
    expected = torch.tensor([[-0.7, -1.0, -1.25, -1.25], [1.6, 1.8, 2.4, 3.0]])
    assert torch.allclose(loss, expected, atol=1e-6)


def test_gradient_is_zero_exactly_where_the_ratio_is_clipped():
    log_ratio = torch.tensor([[0.7, 1.0, 1.3, 1.5], [0.7, 0.9, 1.2, 1.5]]).log().requires_grad_(True)
    adv = torch.tensor([1.0, -2.0])
    clipped_objective(log_ratio, adv, 0.2, torch.tensor([0.25, 0.4])).sum().backward()
    g = log_ratio.grad
    # A > 0: clipped above 1.25 (tokens 2, 3); A < 0: clipped below 0.8 (token 0); elsewhere d/dlogr = -A r
    assert g[0, 2] == 0 and g[0, 3] == 0 and g[1, 0] == 0
    assert torch.allclose(g[0, :2], torch.tensor([-0.7, -1.0]))
    assert torch.allclose(g[1, 1:], torch.tensor([1.8, 2.4, 3.0]))
    # the same ratio 1.3 is clipped under eps = 0.25 and not under eps = 0.4: the bound is per trajectory
    lr = torch.tensor([[1.3], [1.3]]).log().requires_grad_(True)
    clipped_objective(lr, torch.tensor([1.0, 1.0]), 0.2, torch.tensor([0.25, 0.4])).sum().backward()
    assert lr.grad[0, 0] == 0 and lr.grad[1, 0] == pytest.approx(-1.3)


# ====================================================================== the trainer
@pytest.fixture(scope="module")
def cohort():
    return tjh_cohort()


@pytest.fixture(scope="module")
def c_exp(cohort):
    names = [f.name for f in cohort.features]
    return {str(s): names[:3] for split in ("train", "val", "test") for s in cohort.split_ids(split)}


@pytest.fixture(scope="module")
def sft_adapter(tiny, tmp_path_factory):
    """A LoRA adapter on the tiny model that differs from the base (what Stage 1 hands RL)."""
    from eagrl.llm.loading import attach_lora

    torch.manual_seed(0)  # lora_A's init too: the same adapter on every run, so every test here is reproducible
    model = attach_lora(copy.deepcopy(tiny[0]), ModelConfig(source="tiny"))
    gen = torch.Generator().manual_seed(0)
    for name, w in model.named_parameters():
        if "lora_B" in name:
            w.data.copy_(torch.randn(w.shape, generator=gen) * 0.02)
    path = tmp_path_factory.mktemp("sft") / "adapter"
    model.save_pretrained(path)
    return path


def _trainer(cohort, c_exp, sft_adapter, out, label=None, gen=None, cls_reward=None, **rl):
    from eagrl.llm.loading import load_model
    from eagrl.rl.rollout import StructuredRollout
    from eagrl.rl.train import build_trainer, policy_model, prompt_table

    cfg = RLConfig(**{"num_generations": 4, "prompts_per_batch": 2, "micro_batch_size": 4, "updates_per_batch": 2,
                      "max_steps": 2, "max_stays": 6, **rl})
    mcfg = ModelConfig(source="tiny")
    loaded = load_model(mcfg)
    model = policy_model(loaded.model, cfg, sft_adapter, mcfg, out / "cache")
    gen = gen or GEN
    prompts, rows = prompt_table(cohort, c_exp, cfg, gen, loaded.tokenizer)
    assert list(prompts) == cohort.sample_ids(cfg.split, cfg.max_stays, cfg.seed)  # a stratified sample, not a head
    labels = cohort.stays.assign(stay_id=cohort.stays["stay_id"].astype(str)).set_index("stay_id")["label"]
    assert labels[list(prompts)].nunique() == 2
    if label is not None:  # every patient rewarded against this label instead of its own
        rows = [{**r, "label": label} for r in rows]
    rollout = StructuredRollout(prompts, cohort.features, gen, seed=cfg.seed,
                                labels={r["prompt"]: r["label"] for r in rows})
    return build_trainer(model, loaded.tokenizer, cfg, rows, rollout, out / "ckpt", cuda=False,
                         cls_reward=cls_reward), rollout


def test_rollout_masks_inserted_tokens_and_records_entropies(cohort, c_exp, sft_adapter, tmp_path):
    trainer, rollout = _trainer(cohort, c_exp, sft_adapter, tmp_path)
    keys = list(rollout.prompt_ids)[:2]  # two of the stays RL samples from (rl.max_stays: a stratified sample)
    prompts = [k for k in keys for _ in range(3)]
    trainer.model.train()
    out = rollout(prompts, trainer)
    assert trainer.model.training  # the trainer's mode is restored after sampling in eval mode
    assert len(out["completion_ids"]) == 6 and out["prompt_ids"][0] == rollout.prompt_ids[keys[0]]
    tok = trainer.processing_class
    for ids, mask, lps, h in zip(out["completion_ids"], out["env_mask"], out["logprobs"], out["eagrl_entropy"]):
        assert len(ids) == len(mask) == len(lps) and ids[-1] == tok.eos_token_id and mask[-1] == 0
        inserted = tok.decode([t for t, m in zip(ids, mask) if not m])
        assert "<important_features>" in inserted and "<final_answer>" in inserted  # the scaffold is not trained
        assert 0 < sum(mask) < len(mask) and all(lp == 0.0 for lp, m in zip(lps, mask) if not m)
        assert 0.0 < h <= math.log(len(tok)) + 1e-3  # a real entropy, at most log |V|
    # seeded by (seed, step, stay, index): the same call samples the same responses again
    assert rollout(prompts, trainer)["completion_ids"] == out["completion_ids"]
    trainer.state.global_step = 1
    assert rollout(prompts, trainer)["completion_ids"] != out["completion_ids"]


def _padded(out):
    """A rollout's lists as TRL pads them: prompts on the left, completions and the env mask on the right."""
    from trl.trainer.utils import pad

    prompt_ids = pad([torch.tensor(p) for p in out["prompt_ids"]], padding_value=0, padding_side="left")
    prompt_mask = pad([torch.ones(len(p), dtype=torch.long) for p in out["prompt_ids"]], padding_value=0,
                      padding_side="left")
    completion_ids = pad([torch.tensor(c) for c in out["completion_ids"]], padding_value=0)
    completion_mask = pad([torch.ones(len(c), dtype=torch.long) for c in out["completion_ids"]], padding_value=0)
    tool_mask = pad([torch.tensor(m) for m in out["env_mask"]], padding_value=1) * completion_mask
    return prompt_ids, prompt_mask, completion_ids, completion_mask, tool_mask


def test_per_trajectory_bounds_reach_trls_loss(cohort, c_exp, sft_adapter, tmp_path):
    """TRL's _compute_loss, given eps_high (B,), equals the stated objective, and its clip fractions use the bounds."""
    trainer, rollout = _trainer(cohort, c_exp, sft_adapter, tmp_path)
    keys = list(rollout.prompt_ids)[:2]  # two of the stays RL samples from (rl.max_stays: a stratified sample)
    out = rollout([k for k in keys for _ in range(2)], trainer)
    prompt_ids, prompt_mask, completion_ids, completion_mask, tool_mask = _padded(out)
    trainer.model.train()
    logps, _, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1),
        completion_ids.size(1))
    logps = logps.detach()
    # old log-probs chosen so the ratios straddle both bounds: r = exp(logp - old)
    shift = torch.tensor([0.35, 0.35, -0.3, 0.35])[:, None].expand_as(logps)  # log r per trajectory
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    eps = torch.tensor([0.25, 0.45, 0.3, 0.45])
    mask = tool_mask.float()
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
              "completion_mask": completion_mask, "tool_mask": tool_mask, "advantages": adv,
              "old_per_token_logps": logps - shift, "num_items_in_batch": mask.sum(), "eps_high": eps}
    trainer._metrics["train"].clear()
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps  # set by the train loop
    loss = trainer._compute_loss(trainer.model, inputs)
    expected = (clipped_objective(shift, adv, 0.2, eps) * mask).sum() / mask.sum()
    # TRL's token-level ("dapo") normaliser counts the tokens of one optimiser step's share of the batch
    per_step = trainer.args.steps_per_generation / trainer.current_gradient_accumulation_steps
    assert loss.item() == pytest.approx(expected.item() * per_step, rel=1e-4)
    # r = e^0.35 = 1.42: above 1 + 0.25 (trajectory 0: clipped) but below 1 + 0.45 (trajectory 1: not clipped);
    # r = e^-0.3 = 0.74 < 0.8 with A < 0 (trajectory 2: low-clipped); trajectory 3 has A < 0 above 1 (not clipped)
    n = mask.sum(1)
    assert trainer._metrics["train"]["clip_ratio/high_mean"][-1] == pytest.approx((n[0] / n.sum()).item())
    assert trainer._metrics["train"]["clip_ratio/low_mean"][-1] == pytest.approx((n[2] / n.sum()).item())
    assert isinstance(trainer.epsilon_high, float) and isinstance(trainer.epsilon_low, float)  # restored after
    # the same ratio: trajectory 0 (clipped) sends no gradient, trajectory 1 (inside its wider bound) does
    for p in trainer.model.parameters():
        p.grad = None
    loss_row = trainer._compute_loss(trainer.model, {**inputs, "advantages": torch.tensor([1.0, 0.0, 0.0, 0.0])})
    loss_row.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in trainer.model.parameters() if p.requires_grad)
    loss_row = trainer._compute_loss(trainer.model, {**inputs, "advantages": torch.tensor([0.0, 1.0, 0.0, 0.0])})
    loss_row.backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in trainer.model.parameters() if p.requires_grad)


def test_the_trainer_scales_advantages_with_the_configured_floor(cohort, c_exp, sft_adapter, tmp_path, monkeypatch):
    """rl.advantage_std_floor reaches the batch TRL's loss reads, through TRL's own scoring step: given the reward
    functions' values (fixed here, so whatever the tiny model samples), a group whose rewards differ by thousandths
    gets (R - mean) / floor, a group that disagrees about the label TRL's (R - mean) / std."""
    from trl import GRPOTrainer

    per_func = torch.tensor([[0.990, 0.0], [0.995, 0.0], [0.999, 0.0], [0.992, 0.0],   # R_cls saturated
                             [0.2, 0.0], [0.9, 0.2], [0.5, 0.0], [0.7, 0.2]])           # disagreeing
    monkeypatch.setattr(GRPOTrainer, "_calculate_rewards", lambda self, *a: per_func.clone())
    trainer, _ = _trainer(cohort, c_exp, sft_adapter, tmp_path, advantage_std_floor=0.05)
    rows = list(trainer.train_dataset)[:2]
    trainer.model.train()
    out = trainer._generate_and_score_completions([row for row in rows for _ in range(4)])
    r = (per_func * torch.tensor([0.6, 0.4])).sum(1).view(2, 4)  # R = lam R_cls + (1 - lam) R_att
    assert r[0].std() < 0.05 < r[1].std()
    expected = torch.cat([(r[0] - r[0].mean()) / 0.05, (r[1] - r[1].mean()) / r[1].std()])
    assert torch.allclose(out["advantages"], expected, atol=1e-5)
    assert out["advantages"][:4].abs().max() < 0.1  # TRL's own: about +-1
    assert trainer._metrics["train"]["advantage/groups_floored"][-1] == 0.5


def test_each_completion_was_written_from_its_own_patients_prompt(cohort, c_exp, sft_adapter, tmp_path, monkeypatch):
    """Issue 29.4: the pairing of completions, prompts and labels, end to end through TRL. What the reward functions
    receive (stay, label, completion ids) must be what the rollout wrote for that stay: every model-written token's
    recorded log-prob equals the start policy's log-prob recomputed on *that stay's* prompt (and not on another
    stay's), and the label is that stay's. A shifted or shuffled pairing anywhere fails here."""
    import eagrl.rl.train as train

    seen, score = [], train.r_cls

    def recording(completions, label, eagrl_probability, eagrl_well_formed, **kw):
        seen.extend(zip(map(str, kw["prompts"]), label, kw["completion_ids"]))
        return score(completions, label, eagrl_probability, eagrl_well_formed, **kw)

    recording.__name__ = "r_cls"  # TRL names the logged reward after the function
    monkeypatch.setattr(train, "r_cls", recording)
    trainer, rollout = _trainer(cohort, c_exp, sft_adapter, tmp_path, max_steps=2)  # one generation batch
    start = copy.deepcopy(trainer.accelerator.unwrap_model(trainer.model)).eval()
    written = []
    original = rollout.__call__

    def capturing(prompts, tr):
        out = original(prompts, tr)
        written.extend(zip(out["completion_ids"], out["logprobs"], out["env_mask"]))
        return out

    monkeypatch.setattr(rollout, "__call__", capturing)
    trainer.rollout_func = capturing
    trainer.train()
    truth = {str(s): int(y) for s, y in zip(cohort.stays["stay_id"], cohort.stays["label"])}
    assert len(seen) == len(written) == 8 and {y for _, y, _ in seen} == {0, 1}  # 2 stays x G = 4, both classes

    def recomputed(stay, ids):
        prompt = rollout.prompt_ids[stay]
        with torch.no_grad():
            logits = start(torch.tensor([prompt + list(ids)])).logits[0].float()
        return torch.log_softmax(logits, -1)[len(prompt) - 1:-1].gather(1, torch.tensor(ids)[:, None])[:, 0]

    stays = sorted({s for s, _, _ in seen})
    for (stay, label, ids), (w_ids, w_lp, w_mask) in zip(seen, written):
        assert label == truth[stay]
        assert list(ids) == list(w_ids)
        keep = torch.tensor(w_mask, dtype=torch.bool)
        recorded = torch.tensor(w_lp)[keep]
        own = (recomputed(stay, ids)[keep] - recorded).abs().max().item()  # batched, padded sampling: ~3e-3
        other = (recomputed(next(s for s in stays if s != stay), ids)[keep] - recorded).abs().max().item()
        assert own < 1e-2 and other > 5 * own, (own, other)


def _expected_answer(model, tokenizer, contexts, readout: str = "digits") -> float:
    """The mean over contexts of the policy's probability at the answer slot (digits or yes/no readout)."""
    import numpy as np

    from eagrl.llm.structured import digit_tokens, expected_readout, yes_no_tokens

    backend = TransformersBackend(model, tokenizer, prefix_cache_tokens=0, threads=1)
    cand, values = digit_tokens(backend) if readout == "digits" else yes_no_tokens(backend)
    was = model.training
    model.eval()
    with torch.no_grad():
        lp = np.asarray(backend.next_token_logprobs(contexts, cand))
    model.train(was)
    return float(np.mean(expected_readout(lp, values)))


def _answer_before_and_after_training(label, readout, steps, cohort, c_exp, sft_adapter, out) -> tuple[float, float]:
    """Train GRPO against one label for every patient; the policy's answer before and after, read at fixed contexts
    (the start policy's greedy responses up to the answer), so only the policy, not the text it writes, differs."""
    from eagrl.config.reward import ClsReward
    from eagrl.llm.structured import StructuredGenerator

    gen = GEN.model_copy(update={"readout": readout, "serialization": "full" if readout == "digits" else "compact"})
    form = ClsReward(form="brier") if readout == "digits" else None
    trainer, rollout = _trainer(cohort, c_exp, sft_adapter, out, label=label, variant="grpo", max_steps=steps,
                                learning_rate=1e-2, gen=gen, cls_reward=form)
    tok = trainer.processing_class
    prompts = [rollout.prompt_ids[k] for k in rollout.prompt_ids]
    trainer.model.eval()
    with torch.no_grad():
        greedy = StructuredGenerator(TransformersBackend(trainer.model, tok, prefix_cache_tokens=0, threads=1),
                                     gen.model_copy(update={"temperature": 0.0}), cohort.features).generate(prompts)
    contexts = [list(p) + g[0].token_ids[:g[0].readout_index] for p, g in zip(prompts, greedy)]
    before = _expected_answer(trainer.model, tok, contexts, readout)
    trainer.train()
    return before, _expected_answer(trainer.model, tok, contexts, readout)


@pytest.mark.parametrize("label", [1, 0])
def test_training_moves_the_yes_no_answer_toward_the_rewarded_label(label, cohort, c_exp, sft_adapter, tmp_path):
    """The sign of the whole loop with the yes/no readout: trained against one label for every patient, the answer
    moves toward it, through the answer-slot term (the readout's own gradient) in a few steps."""
    before, after = _answer_before_and_after_training(label, "yesno", 6, cohort, c_exp, sft_adapter, tmp_path)
    assert (after - before) * (1 if label else -1) > 0.02, (before, after)


@pytest.mark.slow  # two 24-step runs, the longest test of make test (the digit readout is off in every profile)
def test_the_rewarded_label_decides_where_the_drawn_digits_move(cohort, c_exp, sft_adapter, tmp_path):
    """The sign of the loop with the digit readout, through the drawn answer and the policy gradient alone (reward,
    group advantage, TRL's loss, the optimiser), with the prompt (the full series) and the Brier R_cls it was
    calibrated with. From the same start, the policy trained against label 1 answers higher than the one trained
    against label 0. The contrast, not each run's move, is asserted: both runs also share a drift that does not depend
    on the label (likely the format, since a malformed answer scores 0 whatever the label; not measured), -0.03 to
    +0.01 over LoRA inits 0-5 (24 steps), which once pushed the label-1 move to +0.0199 in CI; the contrast measured
    0.056 to 0.115 over the same inits."""
    before, up = _answer_before_and_after_training(1, "digits", 24, cohort, c_exp, sft_adapter, tmp_path / "to1")
    _, down = _answer_before_and_after_training(0, "digits", 24, cohort, c_exp, sft_adapter, tmp_path / "to0")
    assert up - down > 0.04, (before, up, down)
    assert down < before, (before, down)  # trained against 0 it never rises


@pytest.mark.parametrize("variant", ["eag-rl", "grpo"])
def test_training_logs_every_step_and_saves_the_adapter(variant, cohort, c_exp, sft_adapter, tmp_path):
    from eagrl.rl.train import run_rl

    # T = 0.5: the KL to the start policy must compare log-probs at the same temperature (the rollout records its
    # log-probs at 1; against them the first step read a KL of ~0.4 on TJH)
    cfg = RLConfig(variant=variant, num_generations=4, prompts_per_batch=2, micro_batch_size=4, updates_per_batch=2,
                   max_steps=2, max_stays=6, learning_rate=1e-3, temperature=0.5)
    res = run_rl(ModelConfig(source="tiny"), GEN, cfg, cohort, c_exp, tmp_path / "rl", sft_adapter=sft_adapter)
    assert res.metrics["train_steps"] == 2 and [r["step"] for r in res.history] == [1.0, 2.0]
    first = res.history[0]
    assert {"reward", "rewards/r_cls/mean", "rewards/r_att/mean", "entropy", "eps/mean", "clip_ratio/high_mean",
            "kl_to_start", "completions/mean_length"} <= set(first)
    assert first["kl_to_start"] == pytest.approx(0.0, abs=1e-5)  # sampled from the start policy itself
    assert len(res.eps_values) == 8
    if variant == "eag-rl":
        assert min(res.eps_values) == pytest.approx(0.2) and max(res.eps_values) == pytest.approx(0.4)
    else:  # GRPO: a fixed clip and R_cls only
        assert res.eps_values == pytest.approx([0.2] * 8)
        assert first["reward"] == pytest.approx(first["rewards/r_cls/mean"], abs=1e-6)
    saved = json.loads((res.adapter_dir / "adapter_config.json").read_text())
    assert saved["r"] == 16 and not (res.adapter_dir / "ref").exists()  # the frozen start copy is not saved
    # the adapter moved away from the Stage-1 one
    from safetensors.torch import load_file

    before = load_file(sft_adapter / "adapter_model.safetensors")
    after = load_file(res.adapter_dir / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


TIMINGS = ("train_seconds", "seconds_per_step")


def _same_run(a, b) -> None:
    """Two runs of the same settings ended the same: steps, metrics (timings apart), eps(tau) values, adapter."""
    from safetensors.torch import load_file

    assert [r["step"] for r in a.history] == [r["step"] for r in b.history]
    assert {k: v for k, v in a.metrics.items() if k not in TIMINGS} == pytest.approx(
        {k: v for k, v in b.metrics.items() if k not in TIMINGS})
    assert a.eps_values == pytest.approx(b.eps_values)
    wa, wb = (load_file(r.adapter_dir / "adapter_model.safetensors") for r in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_an_interrupted_run_resumes_from_its_last_checkpoint(cohort, c_exp, sft_adapter, tmp_path):
    """Stopped after its first generation batch and rerun with more steps, a run ends as one that was never
    stopped: the same history, eps(tau) values (kept in the checkpoint) and adapter."""
    from eagrl.rl.train import run_rl

    base = dict(num_generations=2, prompts_per_batch=2, micro_batch_size=2, updates_per_batch=2, max_stays=4,
                learning_rate=1e-3)
    whole = run_rl(ModelConfig(source="tiny"), GEN, RLConfig(max_steps=4, **base), cohort, c_exp, tmp_path / "whole",
                   sft_adapter=sft_adapter)
    run_rl(ModelConfig(source="tiny"), GEN, RLConfig(max_steps=2, **base), cohort, c_exp, tmp_path / "rl",
           sft_adapter=sft_adapter)
    assert (tmp_path / "rl" / "checkpoints" / "checkpoint-2" / "eps_values.json").is_file()
    res = run_rl(ModelConfig(source="tiny"), GEN, RLConfig(max_steps=4, **base), cohort, c_exp, tmp_path / "rl",
                 sft_adapter=sft_adapter)
    assert res.metrics["train_steps"] == 4 and [r["step"] for r in res.history] == [1.0, 2.0, 3.0, 4.0]
    assert len(res.eps_values) == 8  # two generation batches of 2 stays x G = 2, the first read from checkpoint-2
    _same_run(res, whole)


def test_checkpoints_fall_between_generation_batches(cohort, c_exp, sft_adapter, tmp_path):
    """save_steps 1 with two optimiser steps a generation batch checkpoints every second step: a run resumed at
    step 1 would sample a fresh batch (seeded by the step) where the stopped run trained on its buffered one."""
    from eagrl.rl.train import run_rl

    assert RLConfig(save_steps=1, updates_per_batch=2).checkpoint_steps == 2
    assert RLConfig(save_steps=3, updates_per_batch=2).checkpoint_steps == 4
    assert RLConfig(save_steps=2, updates_per_batch=1, num_iterations=2).checkpoint_steps == 2
    assert RLConfig(save_steps=5, updates_per_batch=1).checkpoint_steps == 5
    cfg = RLConfig(max_steps=4, save_total_limit=4, num_generations=2, prompts_per_batch=2, micro_batch_size=2,
                   updates_per_batch=2, max_stays=4, learning_rate=1e-3)
    run_rl(ModelConfig(source="tiny"), GEN, cfg, cohort, c_exp, tmp_path / "rl", sft_adapter=sft_adapter)
    assert sorted(p.name for p in (tmp_path / "rl" / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2",
                                                                                            "checkpoint-4"]


def test_a_finished_run_rerun_trains_no_further_step(cohort, c_exp, sft_adapter, tmp_path):
    """A rerun of a run that reached max_steps (e.g. to re-score it with another held-out cap, or after a stop
    between its last checkpoint and the stage's end) resumes from the last checkpoint and trains nothing more: the
    same steps, metrics, eps(tau) values and adapter."""
    from eagrl.rl.train import run_rl

    cfg = RLConfig(max_steps=2, num_generations=2, prompts_per_batch=2, micro_batch_size=2, updates_per_batch=2,
                   max_stays=4, learning_rate=1e-3)
    first = run_rl(ModelConfig(source="tiny"), GEN, cfg, cohort, c_exp, tmp_path / "rl", sft_adapter=sft_adapter)
    again = run_rl(ModelConfig(source="tiny"), GEN, cfg, cohort, c_exp, tmp_path / "rl", sft_adapter=sft_adapter)
    assert again.metrics["train_steps"] == 2
    _same_run(again, first)


def test_null_max_grad_norm_turns_clipping_off(tmp_path):
    """``rl.max_grad_norm: null`` reaches TRL as 0, which the Trainer reads as no clipping (the SFT twin's test,
    tests/integration/test_sft.py, shows the Trainer then passes the gradient whole); a number passes as it is."""
    from eagrl.rl.train import training_args

    assert training_args(RLConfig(max_grad_norm=None), tmp_path, cuda=False).max_grad_norm == 0.0
    assert training_args(RLConfig(), tmp_path, cuda=False).max_grad_norm == 1.0
    with pytest.raises(ValueError, match="max_grad_norm"):
        RLConfig(max_grad_norm=0.0)  # "off" is spelled null, not 0


def test_bad_settings_and_inputs_are_named(cohort, c_exp, tmp_path):
    from eagrl.errors import DataError
    from eagrl.rl.train import run_rl

    with pytest.raises(ValueError, match="micro_batch_size"):
        RLConfig(num_generations=3, prompts_per_batch=1, micro_batch_size=2)
    with pytest.raises(ValueError, match="eps_max"):
        RLConfig(eps_min=0.3, eps_max=0.2)
    with pytest.raises(ValueError, match="rl.deepspeed 'nowhere.json'"):
        RLConfig(deepspeed="nowhere.json")  # refused when the config loads, not after the SFT stage ran
    assert RLConfig(deepspeed="zero2").deepspeed_path().is_file()
    with pytest.raises(DataError, match="SFT adapter"):
        run_rl(ModelConfig(source="tiny"), GEN, RLConfig(max_steps=1), cohort, c_exp, tmp_path / "a")
    with pytest.raises(DataError, match="not a LoRA adapter"):
        run_rl(ModelConfig(source="tiny"), GEN, RLConfig(max_steps=1), cohort, c_exp, tmp_path / "b",
               sft_adapter=tmp_path)
    with pytest.raises(DataError, match="no C_exp"):
        run_rl(ModelConfig(source="tiny"), GEN, RLConfig(max_steps=1, variant="eag-rl-no-stage1"), cohort, {},
               tmp_path / "c")


@pytest.mark.parametrize("setting, value, resumes", [
    ("generation.cpu_threads", 1, True),          # throughput
    ("generation.batch_size", 3, True),
    ("model.cache_dir", "elsewhere", True),       # where the weights are kept, not which they are
    ("rl.save_steps", 5, True),                   # checkpointing, logging, the held-out check after training
    ("rl.eval_max_stays", 7, True),
    ("rl.logging_steps", 3, True),
    ("rl.lam", 0.5, False),                       # what is trained
    ("rl.temperature", 0.7, False),
    ("generation.depth", 3, False),
    ("model.dtype", "bfloat16", False),
])
def test_the_run_folder_changes_with_what_is_trained_not_with_throughput_or_logging(setting, value, resumes,
                                                                                     tmp_path):
    from eagrl.config import load_config
    from eagrl.rl.stage import _run_key

    attention = tmp_path / "attention.parquet"
    attention.write_bytes(b"c_exp table")
    base = _run_key(load_config("smoke"), "cohort-md5", attention, None)
    assert _run_key(load_config("smoke"), "cohort-md5", attention, None) == base  # stable
    changed = _run_key(load_config("smoke", {setting: value}), "cohort-md5", attention, None)
    assert (changed == base) is resumes
    assert _run_key(load_config("smoke"), "another-cohort", attention, None) != base
    attention.write_bytes(b"another c_exp table")
    assert _run_key(load_config("smoke"), "cohort-md5", attention, None) != base


def test_epochs_done_counts_the_patients_the_steps_sampled():
    cfg = RLConfig(num_generations=4, prompts_per_batch=2, micro_batch_size=4, updates_per_batch=2)
    assert cfg.epochs_done(4, 16) == pytest.approx(0.25)  # the default profile: 2 batches of 2 patients out of 16
    assert cfg.epochs_done(48, 16) == pytest.approx(3.0)
    again = cfg.model_copy(update={"num_iterations": 2})  # each batch used twice: twice the steps per patient
    assert again.epochs_done(48, 16) == pytest.approx(1.5)


def test_the_reward_trend_averages_halves_of_the_steps_and_the_message_says_so():
    from types import SimpleNamespace

    from eagrl.rl.stage import _reward_trend
    from eagrl.rl.train import summary_metrics

    history = [{"step": float(i + 1), "reward": r} for i, r in enumerate([0.4, 0.2, 0.6, 0.1, 0.5])]
    m = summary_metrics(history, SimpleNamespace(global_step=5, training_loss=0.0), 10.0, 8, [])
    assert (m["first_reward"], m["last_reward"]) == (0.4, 0.5)
    assert m["early_reward"] == pytest.approx(0.3) and m["late_reward"] == pytest.approx(0.3)  # steps 1-2, 4-5
    assert _reward_trend(m) == "mean reward 0.300 over the first half of the steps -> 0.300 over the last"
    one = summary_metrics(history[:1], SimpleNamespace(global_step=1, training_loss=0.0), 1.0, 8, [])
    assert "early_reward" not in one and _reward_trend(one) == "reward 0.400"


def test_the_answer_slot_term_is_the_labels_nll_under_the_readout(cohort, c_exp, sft_adapter, tmp_path):
    """With the yes/no readout the rollout puts each stay's label word at the answer slot (inserted: no policy-gradient
    loss there) and the loss adds rl.readout_weight x the label's mean negative log-likelihood under the readout,
    P(y) / (P(yes) + P(no)) summed over spellings at temperature 1, computed here by hand from a plain forward pass,
    whatever temperature the policy samples at."""
    trainer, rollout = _trainer(cohort, c_exp, sft_adapter, tmp_path, readout_weight=2.0, temperature=0.5)
    keys = list(rollout.prompt_ids)[:2]
    out = rollout([k for k in keys for _ in range(2)], trainer)
    tok = trainer.processing_class
    words = {1: tok.encode("yes", add_special_tokens=False)[0], 0: tok.encode("no", add_special_tokens=False)[0]}
    slots = out["eagrl_readout_index"]
    for key, ids, mask, i in zip([k for k in keys for _ in range(2)], out["completion_ids"], out["env_mask"], slots):
        assert i >= 0 and ids[i] == words[rollout.labels[key]] and mask[i] == 0
        assert tok.decode(ids[:i]).endswith("<final_answer>")
    prompt_ids, prompt_mask, completion_ids, completion_mask, tool_mask = _padded(out)
    trainer.model.eval()
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1),
            completion_ids.size(1))
        inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
                  "completion_mask": completion_mask, "tool_mask": tool_mask, "advantages": torch.zeros(4),
                  "old_per_token_logps": logps, "num_items_in_batch": tool_mask.sum().float()}
        trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
        plain = trainer._compute_loss(trainer.model, inputs)
        with_slot = trainer._compute_loss(trainer.model, {**inputs, "readout_index": torch.tensor(slots)})
        full = trainer.accelerator.unwrap_model(trainer.model)(
            torch.cat([prompt_ids, completion_ids], 1), attention_mask=torch.cat([prompt_mask, completion_mask], 1)
        ).logits.float()
    assert trainer.temperature != 1.0  # the readout's temperature is 1, not the sampling one
    yes = [tok.encode(w, add_special_tokens=False)[0] for w in YES_SPELLINGS
           if len(tok.encode(w, add_special_tokens=False)) == 1]
    no = [tok.encode(w, add_special_tokens=False)[0] for w in NO_SPELLINGS
          if len(tok.encode(w, add_special_tokens=False)) == 1]
    start = prompt_ids.size(1)
    terms = []
    for b, i in enumerate(slots):
        p = torch.softmax(full[b, start + i - 1], -1)
        p_yes, p_no = p[sorted(set(yes))].sum(), p[sorted(set(no))].sum()
        p_label = p_yes if completion_ids[b, i] == words[1] else p_no
        terms.append(torch.log(p_label / (p_yes + p_no)))
    nll = -torch.stack(terms).mean()
    expected = plain + 2.0 * nll  # eval mode: no gradient-accumulation scaling (training divides both terms by it)
    assert with_slot.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-5)
    assert trainer._metrics["eval"]["readout/nll"][-1] == pytest.approx(nll.item(), rel=1e-4)
