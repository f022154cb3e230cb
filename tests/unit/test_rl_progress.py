"""RL's progress line: the sampling's figures on a step that sampled, no NaN placeholders on the steps that did not."""
import logging
from types import SimpleNamespace

from eagrl.rl.trainer import ProgressLog

SAMPLED = {"loss": 0.1, "reward": 0.512, "rewards/r_cls/mean": 0.9, "rewards/r_att/mean": 0.03,
           "frac_reward_zero_std": 0.5, "eps/mean": 0.3, "eps/min": 0.2, "eps/max": 0.4, "kl_to_start": 0.01,
           "readout/nll": 0.61, "readout/accuracy": 0.75, "entropy": 0.45, "clip_ratio/high_mean": 0.0}


def _line(caplog, logs):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="eagrl.rl.trainer"):
        ProgressLog().on_log(None, SimpleNamespace(global_step=3, max_steps=24), None, logs=logs)
    return [r.getMessage() for r in caplog.records]


def test_a_step_that_sampled_shows_its_reward_and_the_readouts_fit(caplog):
    (line,) = _line(caplog, SAMPLED)
    assert line.startswith("rl step 3/24, reward 0.512 (R_cls 0.900, R_att 0.030)")
    assert "readout NLL 0.610 acc 0.75" in line and "nan" not in line


def test_the_batchs_next_update_shows_no_reward_placeholders(caplog):
    # TRL logs the sampling's figures only on the step that sampled them: absent, or None, on the next update
    later = {k: v for k, v in SAMPLED.items() if not k.startswith(("reward", "eps/", "frac_", "kl_"))}
    for logs in (later, {**later, "reward": None}):
        (line,) = _line(caplog, logs)
        assert line.startswith("rl step 3/24, the batch's next update") and "nan" not in line.lower()
    assert _line(caplog, {**SAMPLED, "train_loss": 0.2}) == []  # the run's closing summary is not a step


def test_the_std_floors_share_shows_only_when_a_floor_is_set(caplog):
    (line,) = _line(caplog, {**SAMPLED, "advantage/groups_floored": 0.75})
    assert "groups under the std floor 0.75" in line
    (line,) = _line(caplog, SAMPLED)
    assert "std floor" not in line
