"""The evaluate section: profiles load it, bad entries fail at load time naming the bad value."""
from __future__ import annotations

import json

import pytest

from eagrl.config import PROFILES, build_config, config_from_params, load_config
from eagrl.errors import ConfigError


@pytest.mark.parametrize("name", PROFILES)
def test_profiles_carry_the_whole_table_and_round_trip(name):
    cfg = build_config(name)  # as `eagrl run` builds it and hands it to the components
    names = [m.name for m in cfg.evaluate.models]
    assert names[:3] == ["vanilla", "think", "pqd"] and names[-1] == "expert"
    assert {"sft", "grpo", "dapo", "eag-rl", "eag-rl-no-stage1", "eag-rl-no-stage2", "eag-rl-no-ratt",
            "eag-rl-no-adaptive-clip"} <= set(names)
    assert cfg.evaluate.references == ["pqd", "sft"]
    assert config_from_params(name, overrides=json.dumps(cfg.to_flat())) == cfg  # how components get it
    rl = cfg.evaluate.entry("eag-rl")
    assert rl.registered_name("tjh", "mortality") == "eagrl-eag-rl-tjh-mortality"
    assert cfg.evaluate.entry("expert").registered_name("tjh", "mortality") == "eagrl-expert-tjh-mortality"
    logreg = cfg.evaluate.entry("logreg")  # the tabular reference: fitted at evaluation time, no registry
    assert (logreg.kind, logreg.group, logreg.registered) == ("tabular", "reference", None)
    assert cfg.evaluate.tabular.c > 0 and cfg.evaluate.tabular.balanced


def test_default_profile_runs_the_paper_robustness_levels():
    rob = load_config("default").evaluate.robustness
    assert rob.shuffle_levels == [0.2, 0.4, 0.6, 1.0] and {"sft", "eag-rl"} <= set(rob.models)


@pytest.mark.parametrize("override, fragment", [
    ({"evaluate.references": ["pqd", "nope"]}, "['nope']"),
    ({"evaluate.robustness.models": ["expert"]}, "evaluate.robustness.models names ['expert']"),
    ({"evaluate.generalisation.models": ["zzz"]}, "evaluate.generalisation.models names ['zzz']"),
    ({"evaluate.robustness.shuffle_levels": [0.2, 1.5]}, "[1.5]"),
    ({"evaluate.robustness.noise_levels": [0.0]}, "[0.0]"),
    ({"evaluate.models": [{"name": "a", "kind": "prompt"}, {"name": "a", "kind": "prompt"}]}, "['a']"),
    ({"evaluate.models": [{"name": "x", "kind": "registered"}]}, "needs a registered name"),
    ({"evaluate.models": [{"name": "x", "kind": "registered", "registered": "m-{model}"}]}, "'m-{model}'"),
    ({"evaluate.models": [{"name": "x", "kind": "registered", "registered": "m", "version": "newest"}]},
     "'newest'"),
    ({"evaluate.generalisation.targets": [{"dataset": "nowhere"}]}, "nowhere"),
    ({"evaluate.tune_threshold": True, "evaluate.split": "val"}, "cannot score that split too"),
    ({"evaluate.tune_max_stays": 0}, "tune_max_stays"),
    ({"evaluate.models": [{"name": "t", "kind": "tabular", "registered": "lr-{dataset}"}]},
     "entry 't' of kind 'tabular' is fitted at evaluation time and takes no registered name"),
    ({"evaluate.tabular.c": 0}, "evaluate.tabular.c"),
])
def test_bad_evaluate_values_are_named(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config("smoke", override)
    assert fragment in str(err.value)


def test_versions_and_aliases_are_accepted():
    cfg = load_config("smoke", {"evaluate.models": [
        {"name": "pqd", "kind": "prompt"},
        {"name": "sft", "kind": "registered", "registered": "s-{dataset}", "version": "3"},
        {"name": "eag-rl", "kind": "registered", "registered": "r-{task}", "version": "@champion"}],
        "evaluate.robustness.models": ["eag-rl"], "evaluate.generalisation.models": []})
    assert [m.version for m in cfg.evaluate.models] == ["latest", "3", "@champion"]


def test_kfp_component_compiles_with_its_report_output(tmp_path):
    import yaml
    from kfp import compiler

    from components.evaluate import evaluate

    path = tmp_path / "evaluate.yaml"
    compiler.Compiler().compile(evaluate, str(path))
    spec = yaml.safe_load(path.read_text())
    outputs = spec["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    inputs = spec["components"]["comp-evaluate"]["inputDefinitions"]
    assert "cohort" in inputs["artifacts"] and {"profile", "overrides", "parent_run_id"} <= set(inputs["parameters"])


def test_an_adapter_is_attached_to_the_base_its_policy_json_names(tmp_path):
    from eagrl.config.llm import ModelConfig
    from eagrl.evaluate.models import _trained_base

    here = ModelConfig(source="tiny", dtype="bfloat16", cache_dir=str(tmp_path))
    folder = tmp_path / "mlflow" / "eagrl-sft-tjh-mortality_3" / "policy" / "artifacts"
    folder.mkdir(parents=True)
    assert _trained_base("models:/eagrl-sft-tjh-mortality/3", here) == here  # no policy.json: this run's base
    (folder / "policy.json").write_text(json.dumps({"model": {"source": "smollm2-135m", "dtype": "float32"}}))
    base = _trained_base("models:/eagrl-sft-tjh-mortality/3", here)
    assert base.source == "smollm2-135m" and base.dtype == "bfloat16"  # trained base, this run's dtype
