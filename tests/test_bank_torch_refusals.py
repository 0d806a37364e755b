"""``ema_core.torch.EMABank`` refuses bad input before anything is built or written: bad
arguments (the shared ones checked by ``ema_core._banks``, see ``test_bank_args``), a step going
back, a resized param, a bad state_dict."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ema_core import Config, schedules  # noqa: E402
from ema_core.torch import EMABank  # noqa: E402

pytestmark = pytest.mark.usefixtures("host_kernels")

CONFIGS_2 = [
    Config(schedule=schedules.power_function(sigma_rel=0.05), init="copy"),
    Config(schedule=schedules.power_function(sigma_rel=0.10), init="copy", interval=2),
]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"configs": []}, ValueError, r"configs is empty.*K >= 1"),
        ({"sigma_rels": ()}, ValueError, r"sigma_rels is empty"),
        ({}, TypeError, "exactly one of configs or sigma_rels"),
        ({"configs": [Config()], "sigma_rels": [0.1]}, TypeError, "exactly one of"),
        ({"configs": Config()}, TypeError, "configs must be a sequence"),
        ({"configs": [Config(), 0.9]}, TypeError, r"configs\[1\] must be an ema_core.Config"),
        ({"configs": [Config()], "interval": 2}, TypeError, "interval=2 goes with sigma_rels"),
        ({"sigma_rels": [0.1], "interval": 0}, ValueError, "interval must be an int > 0"),
        (
            {"sigma_rels": [0.1, 0.3]},
            ValueError,
            r"sigma_rels\[1\] must be in \(0, 12\*\*-0.5 = 0.288675\), got 0.3",
        ),
        ({"sigma_rels": [0.1, "a"]}, TypeError, r"sigma_rels\[1\] must be a real number, got str"),
        ({"sigma_rels": [0.1, 0.1]}, ValueError, r"sigma_rels\[1\]=0.1 repeats sigma_rels\[0\]"),
        (
            {"configs": [Config(), Config(dtype="float64")]},
            ValueError,
            r"configs\[1\].dtype='float64' but configs\[0\].dtype=None",
        ),
        (
            {"configs": [Config(), Config(buffers="copy")]},
            ValueError,
            r"configs\[1\].buffers='copy'",
        ),
        ({"sigma_rels": [0.1], "snapshot_every": 5}, ValueError, "snapshot_every needs snap"),
        ({"sigma_rels": [0.1], "snapshot_dir": "d"}, ValueError, "snapshot_dir needs snap"),
        (
            {"configs": [Config()], "snapshot_every": 5, "snapshot_dir": "d"},
            ValueError,
            r"configs\[0\] has no sigma_rel",
        ),
        (
            {"sigma_rels": [0.1], "interval": 4, "snapshot_every": 6, "snapshot_dir": "d"},
            ValueError,
            "snapshot_every=6 must be a multiple of the EMAs' interval",
        ),
        ({"sigma_rels": [0.1], "snapshot_every": 1.5, "snapshot_dir": "d"}, TypeError, "an int"),
        (
            {"sigma_rels": [0.1], "snapshot_every": 4, "snapshot_dir": 4},
            TypeError,
            "snapshot_dir must be a str or os.PathLike, got int",
        ),
        (
            {
                "configs": [CONFIGS_2[0], CONFIGS_2[1]],
                "snapshot_every": 4,
                "snapshot_dir": "d",
            },
            ValueError,
            r"must share one interval; got intervals \[1, 2\]",
        ),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        EMABank(torch.nn.Linear(2, 2), **kwargs)


def _snapshot_of(bank: EMABank) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in ema.average.items()} for ema in bank]


def test_a_step_going_back_raises_before_any_ema_is_written():
    model = torch.nn.Linear(8, 8)
    bank = EMABank(model, [Config(schedule=0.5), Config(schedule=0.9, interval=2)])
    bank.update(5)
    bank[1].update(9)  # a member stepped alone: the bank's next step 7 is below its 9
    with torch.no_grad():
        model.weight.add_(1.0)
    before = _snapshot_of(bank)
    with pytest.raises(ValueError, match="step=7 is below this EMA's step 9"):
        bank.update(7)
    for ema, saved in zip(bank, before, strict=True):
        for name, value in ema.average.items():
            assert torch.equal(value, saved[name])
    assert [ema.step for ema in bank] == [5, 9]


def test_a_resized_param_raises_before_any_ema_is_written():
    model = torch.nn.Linear(64, 64, dtype=torch.bfloat16)
    bank = EMABank(model, [Config(schedule=0.5), Config(schedule=0.25)])
    bank.update()
    before = _snapshot_of(bank)
    with torch.no_grad():
        model.weight.data = torch.ones(65, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="shape"):
        bank.update()
    for ema, saved in zip(bank, before, strict=True):
        for name, value in ema.average.items():
            assert torch.equal(value, saved[name])


def test_a_bad_state_dict_loads_nothing():
    model = torch.nn.Linear(4, 4)
    bank = EMABank(model, [Config(schedule=0.5), Config(schedule=0.25)])
    state = bank.state_dict()
    state["emas"][1] = {**state["emas"][1], "step": torch.tensor(-1)}
    other = EMABank(model, [Config(schedule=0.5), Config(schedule=0.25)])
    with torch.no_grad():
        model.weight.add_(1.0)
    other.update()
    before = _snapshot_of(other)
    with pytest.raises(ValueError, match="state_dict\\['step'\\] must be >= 0"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="holds 1 EMAs; this bank has 2"):
        other.load_state_dict({**state, "emas": state["emas"][:1]})
    for ema, saved in zip(other, before, strict=True):
        for name, value in ema.average.items():
            assert torch.equal(value, saved[name])
    assert [ema.step for ema in other] == [1, 1]


def test_a_non_bool_strict_and_a_zero_started_part_load_nothing():
    """``strict`` must be a bool (as ``EMA.load_state_dict``), and a part saved by an EMA with
    ``init="zeros"`` (raw shadows, weight < 1) is refused by a member of another init, naming
    the part; on either refusal no member is written."""
    model = torch.nn.Linear(4, 4)
    zeros = Config(schedule=0.5, init="zeros")
    source = EMABank(model, [Config(schedule=0.5), zeros])
    source.update()
    state = source.state_dict()
    with torch.no_grad():
        model.weight.add_(1.0)
    other = EMABank(model, [Config(schedule=0.5), Config(schedule=0.5)])
    other.update()
    before = _snapshot_of(other)
    with pytest.raises(TypeError, match=r"strict must be a bool \(True or False\), got 'no'"):
        other.load_state_dict(state, strict="no")
    with pytest.raises(ValueError, match=r"state_dict\['emas'\]\[1\]: .*init"):
        other.load_state_dict(state, strict=False)
    for ema, saved in zip(other, before, strict=True):
        for name, value in ema.average.items():
            assert torch.equal(value, saved[name])
    assert [ema.step for ema in other] == [1, 1]
    same = EMABank(model, [Config(schedule=0.5), zeros])
    same.load_state_dict(state)
    assert torch.equal(same[1].average["weight"], source[1].average["weight"])
