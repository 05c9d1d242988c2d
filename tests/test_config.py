"""Config validation and the annealed-wta temperature schedule.

Every bad value must fail when the dataclass is built (so before any model exists: nothing but the
config is constructed in these tests) with its own message, and
the schedule tau_t = tau_0 * rho ** t must hit the numbers computed by hand here.
"""

import math

import pytest

from loramcl.config import LoRAConfig, MCLConfig


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_hypotheses": 0}, "num_hypotheses must be an integer >= 1, got 0"),
        ({"num_hypotheses": -2}, "num_hypotheses must be an integer >= 1, got -2"),
        ({"num_hypotheses": 1.5}, "num_hypotheses must be an integer >= 1, got 1.5"),
        ({"num_hypotheses": True}, "num_hypotheses must be an integer >= 1, got True"),
        ({"epsilon": 1.5}, "epsilon must be a finite number in [0, 1), got 1.5"),
        ({"epsilon": 1.0}, "epsilon must be a finite number in [0, 1), got 1.0"),
        ({"epsilon": -0.1}, "epsilon must be a finite number in [0, 1), got -0.1"),
        ({"temperature_init": -1.0}, "temperature_init must be a finite number > 0, got -1.0"),
        ({"temperature_init": 0.0}, "temperature_init must be a finite number > 0, got 0.0"),
        ({"temperature_min": -1e-6}, "temperature_min must be a finite number > 0, got -1e-06"),
        ({"temperature_decay": 0.0}, "temperature_decay must be a finite number in (0, 1], got 0.0"),
        ({"temperature_decay": 1.001}, "temperature_decay must be a finite number in (0, 1], got 1.001"),
        ({"mode": "soft-wta"}, "mode must be one of wta, relaxed-wta, annealed-wta, random-wta, moe, got 'soft-wta'"),
        ({"schedule_unit": "steps"}, "schedule_unit must be one of step, epoch, got 'steps'"),
    ],
)
def test_mcl_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError) as info:
        MCLConfig(**kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r": 0}, "r must be an integer >= 1, got 0"),
        ({"r": 2.0}, "r must be an integer >= 1, got 2.0"),
        ({"alpha": 0}, "alpha must be a finite number > 0, got 0"),
        ({"alpha": -8.0}, "alpha must be a finite number > 0, got -8.0"),
        ({"dropout": 1.0}, "dropout must be a finite number in [0, 1), got 1.0"),
        ({"dropout": -0.1}, "dropout must be a finite number in [0, 1), got -0.1"),
        ({"target_modules": ""}, "target_modules must be a non-empty list of module-name suffixes"),
        ({"target_modules": []}, "target_modules must be a non-empty list of module-name suffixes, a valid regular expression or 'all-linear', got []"),
        ({"target_modules": ["q_proj", ""]}, "target_modules must be a non-empty list of module-name suffixes"),
        ({"implementation": "gather"}, "implementation must be one of fast, reference, got 'gather'"),
    ],
)
def test_lora_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError) as info:
        LoRAConfig(**kwargs)
    assert str(info.value).startswith(message)


def test_valid_configs_keep_their_values():
    mcl = MCLConfig(num_hypotheses=3, mode="relaxed-wta", epsilon=0.0)
    assert (mcl.num_hypotheses, mcl.mode, mcl.epsilon) == (3, "relaxed-wta", 0.0)
    lora = LoRAConfig(r=16, alpha=32, dropout=0.05, target_modules=("q_proj", "v_proj"))
    assert lora.target_modules == ["q_proj", "v_proj"]  # tuples from YAML become lists
    assert lora.scaling == 2.0
    assert LoRAConfig(target_modules="all-linear").target_modules == "all-linear"
    assert MCLConfig(temperature_decay=1.0).temperature_decay == 1.0  # rho = 1: constant tau is allowed


def test_temperature_per_step():
    cfg = MCLConfig(mode="annealed-wta", temperature_init=2.0, temperature_decay=0.5, temperature_min=0.1)
    # 2 * 0.5 ** t: 2, 1, 0.5, 0.25, 0.125, then 0.0625 <= 0.1 -> plain wta (None)
    expected = [2.0, 1.0, 0.5, 0.25, 0.125, None, None]
    got = [cfg.temperature(step=t, epoch=99) for t in range(7)]  # the epoch is ignored per step
    assert got[5:] == [None, None]
    assert got[:5] == pytest.approx(expected[:5], rel=1e-12)


def test_temperature_switches_exactly_at_tau_min():
    cfg = MCLConfig(mode="annealed-wta", temperature_init=1.0, temperature_decay=0.5, temperature_min=0.25)
    assert cfg.temperature(step=1) == pytest.approx(0.5)
    assert cfg.temperature(step=2) is None  # 0.25 <= tau_min: "once tau_t <= tau_min"


def test_temperature_per_epoch():
    cfg = MCLConfig(
        mode="annealed-wta", temperature_init=1.0, temperature_decay=0.1, temperature_min=1e-3, schedule_unit="epoch"
    )
    assert cfg.temperature(step=12345, epoch=0) == pytest.approx(1.0)
    assert cfg.temperature(step=0, epoch=1) == pytest.approx(0.1)
    assert cfg.temperature(step=0, epoch=2) == pytest.approx(0.01)
    assert cfg.temperature(step=0, epoch=3) is None  # 1e-3 <= tau_min
    assert cfg.temperature(step=0, epoch=4) is None


def test_paper_schedule_switches_near_step_13809():
    cfg = MCLConfig(mode="annealed-wta")  # paper: tau_0 = 1, rho = 0.999, tau_min = 1e-6, per step
    switch = math.log(1e-6) / math.log(0.999)  # 13808.6...
    assert 13808 < switch < 13809
    assert cfg.temperature(step=13808) == pytest.approx(0.999**13808, rel=1e-9)
    assert cfg.temperature(step=13808) > 1e-6
    assert cfg.temperature(step=13809) is None
    assert cfg.temperature(step=1000) == pytest.approx(0.999**1000, rel=1e-9)  # about 0.3677
    assert cfg.temperature(step=1000) == pytest.approx(0.36770, abs=1e-5)
