"""Training examples for SFT, built from the trajectory JSONL that the MCTS stage writes.

One line is one selected trajectory: ``stay_id`` (str), ``label`` (int), ``prompt_ids`` (the chat-templated
prompt), ``token_ids`` (the response) and ``mask`` (one bool per response token: True where the model wrote
it, False where the framework inserted a tag or the probability), plus reward fields this module ignores.

An example is ``input_ids = prompt_ids + token_ids`` with ``labels`` equal to the token where the model
wrote it and -100 elsewhere (every prompt token, every inserted response token), so the language-model loss
is the NLL of the model-written response tokens only. A record with ``"train_text": false`` (a rollout the search
did not select, :func:`eagrl.mcts.select.slot_only_records`) trains its answer slot alone: no token is in
``labels``. With the yes/no readout a trajectory also carries its
``readout_index`` (the answer slot in ``token_ids``): the token there becomes the label's word ("yes" / "no"),
and the example records ``answer_pos`` (its index in ``input_ids``) and ``answer_label``, which the trainer's
answer-slot loss reads (``eagrl.sft.train``); the slot is never in ``labels``. Over ``max_seq_len`` the prompt
loses tokens from its left (the response is never cut; a response that alone does not fit is a
:class:`DataError`).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from eagrl.errors import DataError
from eagrl.mcts.select import trains_text

log = logging.getLogger(__name__)

IGNORE = -100  # label of a token that carries no loss (the value torch's cross-entropy ignores)
REQUIRED = {"stay_id": str, "label": int, "prompt_ids": list, "token_ids": list, "mask": list}


# ====================================================================== reading
def read_trajectories(path: str | Path) -> list[dict]:
    """Every trajectory of the JSONL file, checked; a bad line raises DataError naming file and line."""
    return list(iter_trajectories(path))


def iter_trajectories(path: str | Path) -> Iterator[dict]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"trajectory file {path} does not exist")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            problem = check_trajectory(record)
            if problem:
                raise DataError(f"{path}:{lineno}: {problem}")
            yield record


def check_trajectory(record: object) -> str | None:
    """What is wrong with one decoded line, or None."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        return f"missing field(s) {missing}"
    for key, kind in REQUIRED.items():
        value = record[key]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            return f"field {key!r} should be {kind.__name__}, got {type(value).__name__} {str(value)[:40]!r}"
    for key in ("prompt_ids", "token_ids"):
        bad = [t for t in record[key] if isinstance(t, bool) or not isinstance(t, int) or t < 0]
        if bad:
            return f"field {key!r} holds non-token values, e.g. {bad[:3]}"
    bad = [m for m in record["mask"] if not isinstance(m, bool)]
    if bad:
        return f"field 'mask' holds non-boolean values, e.g. {bad[:3]}"
    n_tok, n_mask = len(record["token_ids"]), len(record["mask"])
    if n_tok != n_mask:
        return f"'mask' has {n_mask} entries but 'token_ids' has {n_tok} (stay {record['stay_id']!r})"
    if not record["prompt_ids"]:
        return f"empty 'prompt_ids' (stay {record['stay_id']!r})"
    return None


# ====================================================================== examples
def build_example(prompt_ids: Sequence[int], token_ids: Sequence[int], mask: Sequence[bool],
                  max_seq_len: int, answer: tuple[int, int, int] | None = None) -> dict[str, list[int] | int]:
    """``{"input_ids", "labels", "answer_pos", "answer_label"}`` of one trajectory, the prompt cut from its left to
    fit ``max_seq_len``. ``answer`` = (readout index in ``token_ids``, label, the label word's token) puts that
    token at the slot; without it ``answer_pos`` is -1 (no answer-slot loss)."""
    if len(token_ids) != len(mask):
        raise DataError(f"mask has {len(mask)} entries but the response has {len(token_ids)} tokens")
    room = max_seq_len - len(token_ids)
    if room < 1:
        raise DataError(f"a response of {len(token_ids)} tokens leaves no room for its prompt within "
                        f"max_seq_len={max_seq_len}; raise sft.max_seq_len")
    prompt = list(prompt_ids)[-room:]
    tokens, trained = list(token_ids), list(mask)
    pos, label = -1, -1
    if answer is not None:
        index, label, token = answer
        if not 0 <= index < len(tokens):
            raise DataError(f"readout_index {index} lies outside the response's {len(tokens)} tokens")
        tokens[index], trained[index] = int(token), False  # the slot's loss is the answer-slot loss, not the LM's
        pos = len(prompt) + index
    labels = [IGNORE] * len(prompt) + [t if m else IGNORE for t, m in zip(tokens, trained)]
    return {"input_ids": prompt + tokens, "labels": labels, "answer_pos": pos, "answer_label": int(label)}


@dataclass
class ExampleSet:
    examples: list[dict[str, list[int]]]  # input_ids, labels
    stay_ids: list[str]
    n_read: int  # trajectories in the file
    n_truncated: int  # prompts cut to fit max_seq_len
    n_no_target: int  # dropped: not one model-written token
    n_slot_only: int = 0  # examples that train the answer slot alone (rollouts the search did not select)

    @property
    def n_target_tokens(self) -> int:
        return sum(sum(label != IGNORE for label in ex["labels"]) for ex in self.examples)

    @property
    def n_answer_targets(self) -> int:
        """Examples whose answer slot is trained on the label."""
        return sum(ex["answer_pos"] >= 0 for ex in self.examples)

    def stats(self) -> dict[str, float]:
        lengths = [len(ex["input_ids"]) for ex in self.examples]
        answered = [ex["answer_label"] for ex in self.examples if ex["answer_pos"] >= 0]
        return {"n_trajectories": self.n_read, "n_examples": len(self.examples), "n_truncated": self.n_truncated,
                "n_no_target": self.n_no_target, "n_target_tokens": self.n_target_tokens,
                "n_answer_targets": len(answered), "n_answer_positive": int(sum(answered)),
                "n_slot_only": self.n_slot_only,
                "mean_seq_len": sum(lengths) / len(lengths) if lengths else 0.0,
                "max_seq_len_seen": max(lengths, default=0)}


def load_examples(path: str | Path, max_seq_len: int, max_examples: int | None = None,
                  answer_tokens: tuple[int, int] | None = None) -> ExampleSet:
    """The training examples of a trajectory file (all lines checked; the first ``max_examples`` kept).

    ``answer_tokens`` = (token of "no", token of "yes"): trajectories with a ``readout_index`` get their answer slot
    set to the label's token and trained (the yes/no readout); None: no answer-slot targets (the digits readout)."""
    examples, stay_ids, n_read, n_truncated, n_no_target, n_slot_only = [], [], 0, 0, 0, 0
    path = Path(path)
    for lineno, rec in enumerate(iter_trajectories(path), start=1):
        n_read += 1
        if max_examples is not None and len(examples) >= max_examples:
            continue
        index = rec.get("readout_index")
        answer = None if answer_tokens is None or index is None else \
            (int(index), int(rec["label"]), answer_tokens[int(rec["label"])])
        slot_only = not trains_text(rec)
        mask = [False] * len(rec["mask"]) if slot_only else rec["mask"]
        if not any(mask) and answer is None:  # a slot-only record without the slot (digits readout) too
            n_no_target += 1
            continue
        n_slot_only += slot_only
        try:
            ex = build_example(rec["prompt_ids"], rec["token_ids"], mask, max_seq_len, answer)
        except DataError as exc:
            raise DataError(f"{path}: trajectory {lineno} (stay {rec['stay_id']!r}): {exc}") from None
        n_truncated += len(ex["input_ids"]) < len(rec["prompt_ids"]) + len(rec["token_ids"])
        if not any(label != IGNORE for label in ex["labels"]) and ex["answer_pos"] < 0:
            n_no_target += 1
            continue
        examples.append(ex)
        stay_ids.append(rec["stay_id"])
    if n_no_target:
        log.warning("%s: %d trajectories have no model-written token and were dropped", path, n_no_target)
    if n_truncated:
        log.info("%s: %d prompts cut from the left to fit max_seq_len=%d", path, n_truncated, max_seq_len)
    if not examples:
        raise DataError(f"{path} yields no training example ({n_read} trajectories, {n_no_target} without a "
                        "model-written token)")
    return ExampleSet(examples, stay_ids, n_read, n_truncated, n_no_target, n_slot_only)


# ====================================================================== batching
class SFTCollator:
    """Pads a list of examples to the longest one, on the right: pad_id / -100 / attention 0."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None):
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask, labels (B, T); answer_pos, answer_label (B,) where the examples carry them."""
        width = max(len(ex["input_ids"]) for ex in examples)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        n = len(examples)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)  # (B, T)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)  # (B, T)
        attention = torch.zeros((n, width), dtype=torch.long)  # (B, T)
        for i, ex in enumerate(examples):
            k = len(ex["input_ids"])
            input_ids[i, :k] = torch.as_tensor(ex["input_ids"])
            labels[i, :k] = torch.as_tensor(ex["labels"])
            attention[i, :k] = 1
        out = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        if all("answer_pos" in ex for ex in examples):
            out["answer_pos"] = torch.as_tensor([int(ex["answer_pos"]) for ex in examples])  # (B,), -1: none
            out["answer_label"] = torch.as_tensor([int(ex["answer_label"]) for ex in examples])  # (B,)
        return out
