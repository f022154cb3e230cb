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


def _cpu(monkeypatch, *, cuda: bool, avx512_bf16: bool, amx: bool, cuda_bf16: bool | None = None):
    import torch

    def bf16(including_emulation=True):  # an emulating device (before Ampere) says True only with emulation
        return cuda if cuda_bf16 is None else (cuda_bf16 or (cuda and including_emulation))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16)
    flags = ["avx512f"] + ["avx512_bf16"] * avx512_bf16 + ["amx_bf16", "amx_tile"] * amx  # /proc/cpuinfo's words
    monkeypatch.setattr("eagrl.config.llm.cpu_bf16_flags", lambda: flags)


@pytest.mark.parametrize("cuda, cuda_bf16, avx512_bf16, amx, device, expected", [
    (False, None, False, False, "auto", "float32"),    # no bfloat16 instructions: emulated, 4-13x slower
    (False, None, True, False, "auto", "bfloat16"),
    (False, None, False, True, "auto", "bfloat16"),
    (True, True, False, False, "auto", "bfloat16"),
    (True, False, False, False, "auto", "float32"),    # a GPU before Ampere emulates bfloat16
    (True, True, False, False, "cpu", "float32"),      # a CUDA device the config does not use decides nothing
])
def test_auto_dtype_follows_the_arithmetic_the_hardware_has(monkeypatch, cuda, cuda_bf16, avx512_bf16, amx, device,
                                                            expected):
    from eagrl.config.llm import ModelConfig

    _cpu(monkeypatch, cuda=cuda, avx512_bf16=avx512_bf16, amx=amx, cuda_bf16=cuda_bf16)
    model = ModelConfig(dtype="auto", device=device)
    assert model.resolved_dtype() == expected
    assert model.weights()["dtype"] == expected  # what every content key and the search store's header hold


@pytest.mark.parametrize("avx512_bf16, expected", [(False, "float32"), (True, "bfloat16")])
def test_build_config_settles_the_default_profiles_auto_dtype_for_the_machine(monkeypatch, tmp_path, avx512_bf16,
                                                                             expected):
    _cpu(monkeypatch, cuda=False, avx512_bf16=avx512_bf16, amx=False)
    assert load_config("default").model.dtype == "auto"
    cfg = build_config("default", workspace=tmp_path)
    assert cfg.model.dtype == expected and cfg.to_flat()["model.dtype"] == expected  # fingerprints, MLflow params
    assert build_config("default", {"model.dtype": "bfloat16"}, workspace=tmp_path).model.dtype == "bfloat16"


def test_building_a_config_on_a_cpu_machine_does_not_load_torch(tmp_path):
    """The data stages and `eagrl config` never need torch: settling `auto` must not load it (2-4 s a command)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from eagrl.config import build_config; cfg = build_config('default', workspace=sys.argv[1]);"
            "print(cfg.model.dtype, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    dtype, loaded = out.stdout.split()
    assert dtype in ("float32", "bfloat16")
    if not any(Path("/dev").glob("nvidia[0-9]*")):
        assert loaded == "False"
