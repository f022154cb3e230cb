"""Which SFT policy an RL row grew from: the table says it, and flags an RL row whose start is no row of it (session
21's GRPO row was the newest registered version, trained from another SFT start than the EAG-RL row it sat beside)."""
from __future__ import annotations

import copy

import mlflow
import pytest
import torch

from eagrl.config import load_config
from eagrl.config.evaluate import ModelEntry
from eagrl.config.llm import ModelConfig
from eagrl.evaluate.models import READY, SKIPPED, Resolved, lineage, resolve
from eagrl.llm.loading import attach_lora, build_tiny
from eagrl.llm.registry import log_policy
from eagrl.scoring.keys import adapter_digest


def _entry(name: str) -> ModelEntry:
    return ModelEntry(name=name, kind="registered", registered=f"eagrl-{name}-{{dataset}}-{{task}}")


def test_each_rl_row_names_the_row_it_started_from_and_a_foreign_start_is_flagged():
    sft = Resolved(_entry("sft"), READY, "models:/eagrl-sft-x-y/2: LoRA adapter on tiny", uri="models:/eagrl-sft-x-y/2",
                   adapter_digest="aaa")
    rl = Resolved(_entry("eag-rl"), READY, "eag-rl note", uri="models:/eagrl-eag-rl-x-y/5", adapter_digest="bbb",
                  start_digest="aaa")
    grpo = Resolved(_entry("grpo"), READY, "grpo note", uri="models:/eagrl-grpo-x-y/1", adapter_digest="ccc",
                    start_digest="zzz")
    old = Resolved(_entry("dapo"), READY, "dapo note", uri="models:/eagrl-dapo-x-y/1", adapter_digest="ddd")
    gone = Resolved(_entry("direct"), SKIPPED, "not registered", start_digest="aaa")

    notes = lineage([sft, rl, grpo, old, gone])

    assert rl.note == "eag-rl note; started from sft (models:/eagrl-sft-x-y/2)"
    assert grpo.note == "grpo note; started from an adapter that is no row of this table"
    assert len(notes) == 1 and notes[0].startswith("grpo (models:/eagrl-grpo-x-y/1) started from an adapter")
    assert "zzz" in notes[0] and "two training chains" in notes[0]
    assert old.note == "dapo note" and gone.note == "not registered"  # no record of a start: nothing is claimed


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        yield tmp_path
    finally:
        mlflow.set_tracking_uri(None)


def test_a_registered_rl_policy_resolves_with_its_own_digest_and_the_start_it_recorded(registry):
    model, _ = build_tiny()
    torch.manual_seed(0)
    adapter = registry / "adapter"
    attach_lora(copy.deepcopy(model), ModelConfig(lora_r=4, lora_alpha=8)).save_pretrained(adapter)
    cfg = load_config("smoke", {"workspace": str(registry / "ws"), "data.dataset": "tjh", "data.task": "mortality",
                                "model.source": "tiny"})
    with mlflow.start_run():
        log_policy(adapter, ModelConfig(source="tiny"), cfg.generation, name="policy",
                   registered_name="eagrl-eag-rl-tjh-mortality", metadata={"start_adapter_digest": "abc123"})
    with mlflow.start_run():  # a version registered before starts were recorded
        log_policy(adapter, ModelConfig(source="tiny"), cfg.generation, name="policy",
                   registered_name="eagrl-sft-tjh-mortality")

    rl = resolve(_entry("eag-rl"), cfg)
    sft = resolve(_entry("sft"), cfg)

    assert rl.status == READY and rl.start_digest == "abc123"
    assert rl.adapter_digest == adapter_digest(adapter) == sft.adapter_digest
    assert sft.start_digest == ""
