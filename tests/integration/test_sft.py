"""SFT on the tiny model: labels, the loss, a short training run, the saved adapter, bad input files."""
from __future__ import annotations

import json

import pytest
import torch

from eagrl.config.llm import ModelConfig
from eagrl.config.sft import ZERO2_CONFIG, SFTConfig
from eagrl.errors import DataError
from eagrl.llm.loading import attach_lora, build_tiny, load_model
from eagrl.sft.data import IGNORE, SFTCollator, build_example, load_examples, read_trajectories
from eagrl.sft.train import build_trainer, load_sft_model, run_sft

TINY = ModelConfig(source="tiny", device="cpu")
RESPONSES = [
    ("what is the albumin trend", "albumin is low and decreased", "albumin, lactate", 0.83),
    ("how does the kidney look", "creatinine is elevated high risk", "creatinine, urea", 0.75),
    ("is the patient in shock", "lactate is high severe sepsis", "lactate, sodium", 0.9),
    ("what is the glucose", "glucose is normal mild", "glucose", 0.1),
]


def trajectory(tok, i: int) -> dict:
    """A P_QD-shaped response: tags and probability inserted (mask False), fields model-written (True)."""
    sub, ans, feats, p = RESPONSES[i % len(RESPONSES)]
    prompt = tok.apply_chat_template([{"role": "user", "content": f"patient age {60 + i} years hemoglobin low"}],
                                     add_generation_prompt=True, tokenize=False)
    ids, mask = [], []
    for text, written in [("<subquestion>", False), (sub, True), ("</subquestion><answer>", False), (ans, True),
                          ("</answer><important_features>", False), (feats, True),
                          (f"</important_features><final_answer>{p:.2f}</final_answer>", False)]:
        piece = tok.encode(text, add_special_tokens=False)
        ids += piece
        mask += [written] * len(piece)
    return {"stay_id": f"s{i}", "label": int(p > 0.5), "prompt_ids": tok.encode(prompt, add_special_tokens=False),
            "token_ids": ids, "mask": mask, "r": 1.0, "r_cls": 0.5, "r_att": 0.5, "probability": p,
            "response": tok.decode(ids)}


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def tok():
    return build_tiny()[1]


def hand_nll(model, batch) -> torch.Tensor:
    """Mean over labelled positions of -log p(token | prefix), computed from the logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()  # (B, T, V)
    logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V): predicts position t+1
    target = batch["labels"][:, 1:]  # (B, T-1)
    keep = target != IGNORE
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return -(picked * keep).sum() / keep.sum()


# ====================================================================== data
def test_labels_ignore_prompt_and_inserted_tokens(tok, tmp_path):
    rec = trajectory(tok, 0)
    ex = build_example(rec["prompt_ids"], rec["token_ids"], rec["mask"], max_seq_len=4096)
    n_prompt = len(rec["prompt_ids"])
    assert ex["input_ids"] == rec["prompt_ids"] + rec["token_ids"]
    assert ex["labels"][:n_prompt] == [IGNORE] * n_prompt
    for tid, m, label in zip(rec["token_ids"], rec["mask"], ex["labels"][n_prompt:]):
        assert label == (tid if m else IGNORE)
    assert 0 < sum(rec["mask"]) < len(rec["mask"])  # both kinds present

    # over max_seq_len: the prompt loses its left end, the response is intact
    short = build_example(rec["prompt_ids"], rec["token_ids"], rec["mask"], max_seq_len=len(rec["token_ids"]) + 5)
    assert short["input_ids"] == rec["prompt_ids"][-5:] + rec["token_ids"]
    assert short["labels"][5:] == ex["labels"][n_prompt:]
    with pytest.raises(DataError, match="max_seq_len"):
        build_example(rec["prompt_ids"], rec["token_ids"], rec["mask"], max_seq_len=len(rec["token_ids"]))

    # the collator pads labels with -100 and masks the padding out of attention
    batch = SFTCollator(pad_id=tok.pad_token_id)([ex, short])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, len(ex["input_ids"]))
    assert (batch["labels"][1, len(short["input_ids"]):] == IGNORE).all()
    assert batch["attention_mask"][1].sum() == len(short["input_ids"])

    data = load_examples(write_jsonl(tmp_path / "t.jsonl", [rec, {**rec, "mask": [False] * len(rec["mask"])}]), 4096)
    assert len(data.examples) == 1 and data.n_no_target == 1
    assert data.n_target_tokens == sum(rec["mask"])


@pytest.mark.parametrize("mutate, needle", [
    (lambda r: "{not json", "not valid JSON"),
    (lambda r: json.dumps({k: v for k, v in r.items() if k != "mask"}), "missing field(s) ['mask']"),
    (lambda r: json.dumps({**r, "mask": r["mask"][:-1]}), "'mask' has"),
    (lambda r: json.dumps({**r, "token_ids": ["a", *r["token_ids"][1:]]}), "non-token values"),
    (lambda r: json.dumps({**r, "stay_id": 3}), "'stay_id' should be str"),
])
def test_malformed_line_names_file_and_line(tok, tmp_path, mutate, needle):
    good = trajectory(tok, 0)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + mutate(good) + "\n")
    with pytest.raises(DataError) as err:
        read_trajectories(path)
    assert f"{path}:2:" in str(err.value) and needle in str(err.value)


# ====================================================================== loss and training
def test_trainer_loss_is_mean_nll_of_model_written_tokens(tok, tmp_path):
    model_cfg, sft_cfg = TINY, SFTConfig(batch_size=2, grad_accumulation=1)
    data = load_examples(write_jsonl(tmp_path / "t.jsonl", [trajectory(tok, i) for i in range(3)]), 4096)
    torch.manual_seed(0)
    model = attach_lora(load_model(model_cfg).model, sft_cfg.lora_model_config(model_cfg))
    trainer = build_trainer(model, tok, sft_cfg, data, tmp_path / "ckpt", cuda=False)
    batch = SFTCollator(tok.pad_token_id)(data.examples)
    model.eval()  # no LoRA dropout: both sides see the same function
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        expected = hand_nll(model, batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # and it differs from the loss over the whole sequence (the masking matters)
    with torch.no_grad():
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)
        full = hand_nll(model, {**batch, "labels": labels})
    assert abs(full.item() - expected.item()) > 1e-3


def test_run_sft_lowers_loss_and_adapter_reloads(tok, tmp_path):
    path = write_jsonl(tmp_path / "traj.jsonl", [trajectory(tok, i) for i in range(8)])
    sft_cfg = SFTConfig(learning_rate=5e-3, epochs=6, batch_size=4, grad_accumulation=1, lora_dropout=0.0,
                        warmup_ratio=0.0, lr_scheduler="constant", deepspeed="zero2", seed=1)
    batch = SFTCollator(tok.pad_token_id)(load_examples(path, 4096).examples)
    base = load_model(TINY).model
    with torch.no_grad():
        before = hand_nll(base, batch).item()

    result = run_sft(TINY, sft_cfg, path, tmp_path / "sft")

    with torch.no_grad():
        after = hand_nll(result.model, batch).item()
    assert after < before - 0.1, (before, after)
    assert result.metrics["n_examples"] == 8 and result.metrics["train_steps"] == 12
    assert len(result.history) == 12 and result.history[-1]["loss"] < result.history[0]["loss"]
    assert {"train_loss", "first_loss", "last_loss", "train_seconds", "n_target_tokens"} <= set(result.metrics)
    adapter = result.adapter_dir
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 16
    assert json.loads((tmp_path / "sft" / "train_history.json").read_text()) == result.history

    merged = load_sft_model(TINY, adapter).model
    assert not hasattr(merged, "peft_config")  # merged into plain weights
    with torch.no_grad():
        want = result.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        plain = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter did change the model


def test_config_checks():
    cfg = SFTConfig()
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.learning_rate) == (16, 32, 0.05, 2e-4)
    assert SFTConfig(deepspeed="zero2").deepspeed_path() == ZERO2_CONFIG
    assert json.loads(ZERO2_CONFIG.read_text())["zero_optimization"]["stage"] == 2
    with pytest.raises(ValueError, match="nowhere.json"):
        SFTConfig(deepspeed="nowhere.json")
    mc = cfg.model_copy(update={"lora_r": 4}).lora_model_config(TINY)
    assert mc.lora_r == 4 and mc.source == "tiny"


# ====================================================================== the answer slot (yes/no readout)
def answered(tok, i: int, label: int) -> dict:
    """A response whose answer slot (after <final_answer>) holds the framework's word, with its readout_index; the
    prompt says something of the label (so a policy can fit it), the reasoning says nothing of it."""
    rec = trajectory(tok, i)
    head = [t for t, m in zip(rec["token_ids"], rec["mask"])]
    text = tok.decode(head)
    cut = text.index("<final_answer>") + len("<final_answer>")
    ids = tok.encode(text[:cut], add_special_tokens=False)
    mask = rec["mask"][:len(ids)]
    index = len(ids)
    word = tok.encode("no", add_special_tokens=False)  # the framework's (here wrong half the time) word
    tail = tok.encode("</final_answer>", add_special_tokens=False)
    state = "lactate high severe shock" if label else "lactate normal mild"
    prompt = tok.apply_chat_template([{"role": "user", "content": f"patient {i} {state}"}],
                                     add_generation_prompt=True, tokenize=False)
    return {**rec, "stay_id": f"s{i}", "label": label, "prompt_ids": tok.encode(prompt, add_special_tokens=False),
            "token_ids": ids + word + tail, "mask": mask + [False] * (len(word) + len(tail)), "readout_index": index}


def _yes_no(tok):
    from eagrl.llm.structured import tokenizer_encode, yes_no_ids

    return yes_no_ids(tokenizer_encode(tok))


def test_the_answer_slot_holds_the_label_and_its_loss_is_the_two_way_readout(tok, tmp_path):
    """The slot's token becomes the label's word (never an LM target); the loss is the mean NLL of the reasoning
    tokens plus the class-weighted cross-entropy of the label against the other word, P(y) / (P(yes) + P(no))
    summed over spellings, computed here by hand from the logits."""
    recs = [answered(tok, i, label) for i, label in enumerate([1, 0, 0, 0])]
    yes_tok, no_tok = tok.encode("yes", add_special_tokens=False)[0], tok.encode("no", add_special_tokens=False)[0]
    data = load_examples(write_jsonl(tmp_path / "a.jsonl", recs), 4096, answer_tokens=(no_tok, yes_tok))
    assert data.n_answer_targets == 4 and data.stats()["n_answer_positive"] == 1
    for rec, ex in zip(recs, data.examples):
        assert ex["input_ids"][ex["answer_pos"]] == (yes_tok if rec["label"] else no_tok)
        assert ex["labels"][ex["answer_pos"]] == IGNORE
    sft_cfg = SFTConfig(batch_size=4, grad_accumulation=1, answer_weight=2.0)
    torch.manual_seed(0)
    model = attach_lora(load_model(TINY).model, sft_cfg.lora_model_config(TINY))
    yes, no = _yes_no(tok)
    trainer = build_trainer(model, tok, sft_cfg, data, tmp_path / "ckpt", cuda=False, readout_ids=(yes, no))
    batch = SFTCollator(tok.pad_token_id)(data.examples)
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch)).item()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        prob = torch.softmax(logits[torch.arange(4), batch["answer_pos"] - 1], -1)  # (4, V) at the slot
        p_yes = prob[:, yes].sum(-1) / (prob[:, yes].sum(-1) + prob[:, no].sum(-1))
        y = batch["answer_label"].float()
        w = torch.where(y == 1, torch.tensor(4 / 2.0), torch.tensor(4 / 6.0))  # n / (2 n_class): 2.0 and 0.667
        ce = -(w * torch.log(torch.where(y == 1, p_yes, 1 - p_yes))).sum() / 4
        expected = hand_nll(model, batch) + 2.0 * ce
    assert loss == pytest.approx(expected.item(), rel=1e-4)

    # one stay a batch (the default profile): each stay's slot term is still its class's weight x its NLL, so an
    # epoch weighs the classes as the whole-set batch does (dividing by the batch's own weights cancelled them)
    one_cfg = sft_cfg.model_copy(update={"batch_size": 1, "reasoning_weight": 0.0})
    single = build_trainer(model, tok, one_cfg, data, tmp_path / "ckpt1", cuda=False, readout_ids=(yes, no))
    with torch.no_grad():
        for i, ex in enumerate(data.examples):
            part = single.compute_loss(model, dict(SFTCollator(tok.pad_token_id)([ex]))).item()
            nll = -torch.log(p_yes[i] if y[i] == 1 else 1 - p_yes[i]).item()
            assert part == pytest.approx(2.0 * w[i].item() * nll, rel=1e-4)


def test_gradient_clipping_caps_what_the_optimiser_sees_and_null_turns_it_off(tok, tmp_path):
    """``sft.max_grad_norm`` clips the LoRA gradient before each optimiser step; ``None`` leaves it whole (at one stay
    a step, clipping cuts the steps the slot gets wrong and undoes the class weights: docs/results.md, session 23)."""
    from transformers import TrainerCallback

    class Seen(TrainerCallback):
        def __init__(self, model):
            self.model, self.norms = model, []

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            grads = [p.grad.detach().float() for p in self.model.parameters() if p.grad is not None]
            self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    recs = [answered(tok, i, label) for i, label in enumerate([1, 0, 0, 0])]
    words = tok.encode("no", add_special_tokens=False)[0], tok.encode("yes", add_special_tokens=False)[0]
    data = load_examples(write_jsonl(tmp_path / "a.jsonl", recs), 4096, answer_tokens=words)
    seen = {}
    for clip in (1e-3, None):
        cfg = SFTConfig(batch_size=1, grad_accumulation=1, epochs=1, max_grad_norm=clip, reasoning_weight=0.0)
        torch.manual_seed(0)
        model = attach_lora(load_model(TINY).model, cfg.lora_model_config(TINY))
        trainer = build_trainer(model, tok, cfg, data, tmp_path / f"ckpt-{clip}", cuda=False, readout_ids=_yes_no(tok))
        watch = Seen(model)
        trainer.add_callback(watch)
        trainer.train()
        seen[clip] = watch.norms
    assert len(seen[1e-3]) == len(seen[None]) == 4
    assert max(seen[1e-3]) <= 1e-3 * 1.01
    assert min(seen[None]) > 1e-2  # the unclipped gradients of the same steps


def test_sft_fits_its_training_stays_through_the_readout(tok, tmp_path):
    """Fit before generalisation: after SFT the readout at the slot ranks its own training stays by label."""
    from eagrl.metrics import auroc
    from eagrl.sft.train import answer_slot_logprob

    labels = [1, 0, 1, 0, 0, 1, 0, 0]
    path = write_jsonl(tmp_path / "a.jsonl", [answered(tok, i, y) for i, y in enumerate(labels)])
    sft_cfg = SFTConfig(learning_rate=3e-3, epochs=8, batch_size=4, grad_accumulation=1, lora_dropout=0.0,
                        warmup_ratio=0.0, lr_scheduler="constant", seed=1)
    yes, no = _yes_no(tok)
    encode_ids = (tok.encode("no", add_special_tokens=False)[0], tok.encode("yes", add_special_tokens=False)[0])
    batch = SFTCollator(tok.pad_token_id)(load_examples(path, 4096, answer_tokens=encode_ids).examples)

    def readout(model) -> list[float]:
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return answer_slot_logprob(logits[torch.arange(len(labels)), batch["answer_pos"] - 1], yes, no)[:, 1] \
                .exp().tolist()

    def separation(p) -> float:  # mean readout of the positives minus that of the negatives
        y = torch.tensor(labels, dtype=torch.bool)
        p = torch.tensor(p)
        return (p[y].mean() - p[~y].mean()).item()

    p_before = readout(load_model(TINY).model)
    result = run_sft(TINY, sft_cfg, path, tmp_path / "sft", readout="yesno")
    p_after = readout(result.model)
    assert auroc(labels, p_after) == 1.0 and auroc(labels, p_after) > auroc(labels, p_before)
    assert separation(p_after) > separation(p_before) + 0.02, (separation(p_before), separation(p_after))
    m = result.metrics
    assert m["optimizer_steps"] == 16 and m["answer_tokens_trained"] == 64
    assert all("answer_loss" in row for row in result.history)


def cued(tok, i: int, label: int, cue: int, train_text: bool = True) -> dict:
    """``answered`` with a reasoning that names a side (``cue``: 1 "severe", 0 "mild"), as the search's selection
    writes the label into the text it keeps; ``train_text`` False marks a rollout the search did not select."""
    rec = answered(tok, i, label)
    word = tok.encode(" severe shock" if cue else " mild stable", add_special_tokens=False)
    index = rec["readout_index"]
    tokens = rec["token_ids"][:index - 1] + word + rec["token_ids"][index - 1:]
    mask = rec["mask"][:index - 1] + [True] * len(word) + rec["mask"][index - 1:]
    out = {**rec, "token_ids": tokens, "mask": mask, "readout_index": index + len(word)}
    return out if train_text else {**out, "train_text": False}


def test_a_slot_only_rollout_trains_its_answer_slot_and_no_reasoning_token(tok, tmp_path):
    yes_no = (tok.encode("no", add_special_tokens=False)[0], tok.encode("yes", add_special_tokens=False)[0])
    recs = [cued(tok, 0, 1, 1), cued(tok, 0, 1, 0, train_text=False)]
    data = load_examples(write_jsonl(tmp_path / "a.jsonl", recs), 4096, answer_tokens=yes_no)
    selected, other = data.examples
    assert any(t != IGNORE for t in selected["labels"]) and all(t == IGNORE for t in other["labels"])
    assert other["answer_pos"] >= 0 and other["input_ids"][other["answer_pos"]] == yes_no[1]
    assert data.stats()["n_slot_only"] == 1 and data.n_answer_targets == 2
    digits = load_examples(write_jsonl(tmp_path / "b.jsonl", recs), 4096)  # no answer slot: nothing to train on it
    assert len(digits.examples) == 1 and digits.n_no_target == 1


def test_with_every_rollout_the_slot_reads_the_patient_not_the_texts_cue(tok, tmp_path):
    """The design step of session 17, in miniature. The prompt tells the label, and so does the reasoning of the
    selected rollouts (the search's selection wrote it there). Trained on those alone, the slot reads the text's cue:
    on texts with the other cue it ranks the stays near chance (TJH: 0.301). Trained also, for the slot alone, on the
    other rollouts (whose cue is the other label), the cue is worthless on the union and the slot reads the patient:
    it ranks the stays by label whichever cue the text carries."""
    from eagrl.metrics import auroc
    from eagrl.sft.train import answer_slot_logprob

    labels = [1, 0, 1, 0, 0, 1, 0, 1]
    selected = [cued(tok, i, y, y) for i, y in enumerate(labels)]
    others = [cued(tok, i, y, 1 - y, train_text=False) for i, y in enumerate(labels)]
    yes_no = (tok.encode("no", add_special_tokens=False)[0], tok.encode("yes", add_special_tokens=False)[0])
    sft_cfg = SFTConfig(learning_rate=3e-3, epochs=8, batch_size=4, grad_accumulation=1, lora_dropout=0.0,
                        lr_scheduler="constant", seed=1)
    yes, no = _yes_no(tok)
    wrong_cue = [cued(tok, i, y, 1 - y) for i, y in enumerate(labels)]
    batch = SFTCollator(tok.pad_token_id)(
        load_examples(write_jsonl(tmp_path / "w.jsonl", wrong_cue), 4096, answer_tokens=yes_no).examples)

    def auroc_on_wrong_cue(records, name) -> float:
        result = run_sft(TINY, sft_cfg, write_jsonl(tmp_path / f"{name}.jsonl", records), tmp_path / name,
                         readout="yesno")
        assert result.metrics["n_slot_only"] == sum(r.get("train_text") is False for r in records)
        with torch.no_grad():
            logits = result.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            p = answer_slot_logprob(logits[torch.arange(len(labels)), batch["answer_pos"] - 1], yes, no)[:, 1].exp()
        return auroc(labels, p.tolist())

    every, only_selected = auroc_on_wrong_cue(selected + others, "every"), auroc_on_wrong_cue(selected, "selected")
    assert every == 1.0 and only_selected < 0.75, (every, only_selected)
