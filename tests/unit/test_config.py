import pytest

from eagrl.config import PROFILES, build_config, config_from_params, load_config, parse_override
from eagrl.errors import ConfigError


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_loads(name):
    cfg = load_config(name)
    assert cfg.profile == name
    assert abs(sum(cfg.data.split) - 1) < 1e-9


def test_default_profile_is_mimic_demo_readmission():
    cfg = load_config("default")
    assert (cfg.data.dataset, cfg.data.task) == ("mimic-iv-demo", "readmission_30d")


def test_overrides_reach_nested_fields_and_are_typed():
    cfg = load_config("default", {"data.seed": 7, "data.split": [0.8, 0.1, 0.1],
                                  "validation.min_positives_per_split": 5})
    assert cfg.data.seed == 7 and cfg.data.split == (0.8, 0.1, 0.1)
    assert cfg.validation.min_positives_per_split == 5


def test_parse_override_reads_yaml_scalars():
    assert parse_override("data.seed=3") == ("data.seed", 3)
    assert parse_override("data.bin=day") == ("data.bin", "day")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("data.seed")


@pytest.mark.parametrize(
    "override, fragment",
    [
        ({"data.split": [0.5, 0.2, 0.2]}, "summing to 1"),
        ({"data.task": "sepsis"}, "data.task"),
        ({"data.min_visits": 0}, "data.min_visits"),
        ({"data.nonexistent": 1}, "data.nonexistent"),
        ({"data.bin": "weekly"}, "data.bin"),
        ({"sft.own_text_epochs": 1, "generation.readout": "digits"}, "sft.own_text_epochs"),  # no slot to train
    ],
)
def test_bad_values_are_named_with_the_value(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config("default", override)
    assert fragment in str(err.value)


def test_unknown_profile_lists_the_choices():
    with pytest.raises(ConfigError, match="smoke, default, paper"):
        load_config("fast")


def test_pipeline_params_round_trip_the_whole_config():
    import json

    # as `eagrl run` builds it (the one builder: absolute workspace, pinned MLflow store) and hands it on
    cfg = build_config("smoke", {"data.dataset": "tjh", "data.task": "mortality", "data.seed": 11})
    again = config_from_params(cfg.profile, overrides=json.dumps(cfg.to_flat()))
    assert again == cfg
    # plain UI parameters win over the profile; a blank task is the dataset's default (issue 27)
    ui = config_from_params("default", dataset="tjh", task="", data_path="")
    assert ui.data.dataset == "tjh" and ui.data.task == "mortality"
    with pytest.raises(ConfigError, match="JSON"):
        config_from_params("default", overrides="{not json")
