"""What a torch user coming from timm / torch_ema met first (a new-user walkthrough): reads that
missed ``model.to(dtype)``, ``device=`` values refused late, peers' ``update`` calls, config
mismatches buried in two reprs, filter and pair hints, and ``from ema_core import EMA``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ema_core import Config, _config_text, presets

torch = pytest.importorskip("torch")

PEER_UPDATE = (
    "the EMA already tracks its module: timm's update(model, step=t) is ema.update(t); "
    "torch_ema's update() and diffusers' step(parameters) are ema.update()"
)

from ema_core.checkpoint import export  # noqa: E402
from ema_core.torch import EMA, EMABank  # noqa: E402


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 3)
    )


# ---- 1. reads follow model.to(dtype) before the next update ----


def test_state_dict_average_and_export_follow_model_to_dtype():
    model = _net()
    ema = EMA(model, decay=0.5)
    model.to(torch.float64)
    saved = ema.state_dict()
    assert saved["shadow"]["0.weight"].dtype == torch.float64
    twin = EMA(_net().to(torch.float64), decay=0.5)
    twin.load_state_dict(saved)  # refused before: float32 shadows for a float64 EMA
    assert torch.equal(twin.average["0.weight"], model[0].weight)
    other = EMA(model.to(torch.float32), decay=0.5)
    model.to(torch.float64)
    assert other.average["3.bias"].dtype == torch.float64
    assert export(other, format="state_dict")["0.weight"].dtype == torch.float64


def test_reads_keep_the_shadows_when_the_model_cannot_be_followed():
    model = _net()
    ema = EMA(model, decay=0.5)
    before = {n: t.clone() for n, t in ema.state_dict()["shadow"].items()}
    model.to("meta")  # refused by the next update, not by a read
    saved = ema.state_dict()["shadow"]
    assert all(torch.equal(saved[n], before[n]) for n in before)
    with pytest.raises(ValueError, match="meta device"):
        ema.update()


def test_average_inside_a_no_copy_swap_keeps_the_live_tensors_bound():
    model = _net()
    ema, twin = EMA(model, decay=0.5, buffers="skip"), EMA(model, decay=0.5, buffers="skip")
    with torch.no_grad():
        model[3].weight.add_(1.0)
    ema.update()
    twin.update()
    live = model[3].weight.detach().clone()
    with ema.swap(copy=False):
        assert torch.equal(ema.average["3.weight"], twin.average["3.weight"])
        assert torch.equal(model[3].weight, twin.average["3.weight"])
    assert torch.equal(model[3].weight, live)
    with torch.no_grad():
        model[3].weight.add_(1.0)
    ema.update()  # from the model's own weight, not from the shadow it held in the block
    twin.update()
    assert torch.equal(ema.average["3.weight"], twin.average["3.weight"])


# ---- 2. device= checked before anything is built ----


@pytest.mark.parametrize(
    ("device", "error", "match"),
    [
        ("meta", ValueError, r"device='meta': shadows on the meta device hold no values"),
        (torch.device("meta"), ValueError, r"device=device\(type='meta'\)"),
        ("foo", ValueError, r"device='foo' is not a device torch knows: pass a torch.device"),
        (3.5, TypeError, r"device must be a torch.device, a device string .* got float 3.5"),
    ],
)
def test_a_bad_device_is_refused_when_the_ema_is_built(device, error, match):
    model = torch.nn.Linear(2, 2, device="meta")  # the device is refused first, not this
    with pytest.raises(error, match=match):
        EMA(model, decay=0.9, device=device)


def test_a_cuda_device_the_machine_lacks_is_refused_when_the_ema_is_built():
    """One past the CUDA devices torch sees (all of them on a machine without CUDA)."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=rf"device='cuda:{count}', but this machine has {count}"):
        EMA(model, decay=0.9, device=f"cuda:{count}")
    if count == 0:
        with pytest.raises(ValueError, match=r"device='cuda', but this machine has 0 CUDA"):
            EMA(model, decay=0.9, device="cuda")


@pytest.mark.parametrize("kind", ["xpu", "mps", "hpu"])
def test_another_accelerator_the_machine_lacks_is_refused_when_the_ema_is_built(kind):
    """Not only CUDA: a device type torch parses but cannot allocate on here is a ValueError
    naming it (was torch's own NotImplementedError / AssertionError from the first shadow)."""
    try:
        torch.empty(0, device=kind)
    except Exception:  # the machine lacks it: the case under test
        pass
    else:
        pytest.skip(f"this machine has {kind}")
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=rf"device='{kind}', but torch cannot place a tensor"):
        EMA(model, decay=0.9, device=kind)


def test_a_good_device_is_still_taken():
    model = torch.nn.Linear(2, 2)
    for device in ("cpu", "cpu:0", torch.device("cpu")):
        assert EMA(model, decay=0.9, device=device).average["weight"].device.type == "cpu"


# ---- 3. timm's and torch_ema's update calls ----


@pytest.mark.parametrize(
    "call",
    [
        lambda ema, m: ema.update(m),
        lambda ema, m: ema.update(m, step=3),
        lambda ema, m: ema.update(step=m),
        lambda ema, m: ema.update(m.parameters()),
        lambda ema, m: ema.update(list(m.parameters())),
    ],
    ids=["module", "module-and-step", "step=module", "parameters", "list"],
)
def test_update_refuses_a_module_or_its_tensors_with_the_peer_translation(call):
    model = _net()
    ema = EMA(model, decay=0.9)
    with pytest.raises(TypeError) as info:
        call(ema, model)
    message = str(info.value)
    assert message.endswith(PEER_UPDATE)
    assert len(message) < 300 and "\n" not in message
    assert "Conv2d(" not in message and "tensor(" not in message
    assert ema.step == 0


def test_update_with_a_parameter_as_step_is_the_shared_step_refusal():
    """A tensor with dimensions is refused by the step check every entry point shares
    (``tests/test_arguments.py``), without printing the tensor."""
    model = _net()
    ema = EMA(model, decay=0.9)
    with pytest.raises(TypeError, match=r"^step must be a 0-d integer array, got shape") as info:
        ema.update(model[3].weight)
    assert "tensor(" not in str(info.value) and ema.step == 0


def test_a_bank_update_refuses_the_module_too():
    model = _net()
    bank = EMABank(model, sigma_rels=(0.05, 0.1))
    with pytest.raises(
        TypeError, match=r"update\(\) got a Sequential as its step: the EMA already"
    ):
        bank.update(model, step=3)
    bank.update(step=2)
    assert [ema.step for ema in bank] == [2, 2]


def test_update_keyword_step_still_works_and_others_are_refused():
    ema = EMA(torch.nn.Linear(2, 2), decay=0.9)
    ema.update(step=3)
    ema.update(torch.tensor(4))
    assert int(ema.step) == 4
    with pytest.raises(TypeError, match=r"update\(\) got step twice: int 5 and step=int 5"):
        ema.update(5, step=5)
    with pytest.raises(TypeError, match=r"update\(\) takes only step, got .*\['decay'\]"):
        ema.update(decay=0.5)  # type: ignore[arg-type]
    assert int(ema.step) == 4


# ---- 4. config mismatches name the differing fields ----


def test_a_strict_load_names_the_differing_field_first():
    model = _net()
    saved = EMA(model, config=presets.timm(0.99, use_warmup=True)).state_dict()
    skip = EMA(model, config=presets.timm(0.99, use_warmup=True), buffers="skip")
    want = r"differs from this EMA's config: buffers: 'skip' in this EMA, 'average' in state_dict;"
    with pytest.raises(ValueError, match=want):
        skip.load_state_dict(saved)
    plain = EMA(model, config=presets.timm(0.99))
    want = r"config: schedule\.inner: Constant\(decay=0\.99\) in this EMA, Warmup\(decay=0\.99"
    with pytest.raises(ValueError, match=want):
        plain.load_state_dict(saved)


def test_config_differences_reads_configs_and_their_text():
    here, there = Config(schedule=0.9, init="copy"), Config(schedule=0.9, init="zeros")
    assert (
        _config_text.config_differences(here, _config_text.config_text(there))
        == "init: 'copy' here, 'zeros' there"
    )
    assert _config_text.config_differences(here, here) == ""
    text = "Odd(a='x, y', b=(1, 2))"
    labels = ("in a", "in b")
    assert _config_text.config_differences(text, "Odd(a='x, y', b=(1, 3))", labels) == (
        "b: (1, 2) in a, (1, 3) in b"
    )
    assert (
        _config_text.config_differences("not a repr", "Odd()")
        == "config: not a repr here, Odd() there"
    )


# ---- 5. hints for parameters without names and filters that match nothing ----


def test_parameters_without_names_suggest_the_module_or_named_parameters():
    model = _net()
    with pytest.raises(TypeError, match=r"got Parameter: pass the module itself \(EMA\(model\)\) "):
        EMA(model.parameters(), decay=0.9)
    averager = EMA(model, decay=0.9)
    before = {n: t.detach().clone() for n, t in model.named_parameters()}
    with pytest.raises(
        TypeError,
        match=r"^copy_to\(module_or_named_tensors\) must yield \(name, tensor\) pairs, got "
        r"Parameter: pass the module itself \(copy_to\(model\)\) ",
    ):
        averager.copy_to(model.parameters())  # diffusers' copy_to(unet.parameters())
    assert all(torch.equal(t, before[n]) for n, t in model.named_parameters())


def test_an_include_that_matches_nothing_says_how_patterns_read():
    want = (
        r"include='encoder'.*globs matched against full names \(e\.g\. 'encoder\.\*'.*"
        r"\['0\.weight', '0\.bias', '1\.weight'\] \.\.\. \(9 in all\)"
    )
    with pytest.raises(ValueError, match=want):
        EMA(_net(), decay=0.9, include="encoder")


# ---- 6. framework names asked of the package ----


def test_framework_names_say_where_they_are_without_importing_a_framework():
    code = (
        "import sys\n"
        "for name, where in [('EMA', 'torch'), ('full_state_dict', 'torch'), "
        "('make_update', 'jax'), ('ema_average', 'jax')]:\n"
        "    try:\n"
        "        exec(f'from ema_core import {name}')\n"
        "    except ImportError as err:\n"
        "        assert str(err) == f'{name} is in ema_core.{where} (from ema_core.{where} import "
        "{name})', err\n"
        "    else:\n"
        "        raise AssertionError(name)\n"
        "import ema_core\n"
        "assert not hasattr(ema_core, 'nothing')\n"
        "print(sorted({'torch', 'jax'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_importing_the_torch_adapter_leaves_dynamo_alone() -> None:
    """``import ema_core.torch`` and an update do not import ``torch._dynamo`` (about a second
    per process; ``torch.compiler.disable`` is applied at the first update made while compiling)."""
    code = (
        "import sys, torch\n"
        "from ema_core import Config\nfrom ema_core.torch import EMA, EMABank\n"
        "model = torch.nn.Linear(3, 2)\n"
        "EMA(model, decay=0.5).update()\n"
        "EMABank(model, configs=[Config(0.5)]).update()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("bank", [False, True])
def test_update_inside_a_compiled_function_runs_eagerly_without_warnings(bank: bool) -> None:
    """``torch.compile`` of a step that calls ``update`` (pytest turns warnings into errors):
    dynamo does not trace into the EMA (it warned about array-api-compat's caches and would bake
    the EMA's checks into a graph); the update runs eagerly and moves the average by the decay."""
    model = torch.nn.Linear(3, 2)
    ema = EMABank(model, configs=[Config(0.5)]) if bank else EMA(model, decay=0.5)
    step = torch.compile(ema.update, backend="eager")
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(1.0)
        before = (ema[0] if bank else ema).average["weight"].clone()
        step()
        after = (ema[0] if bank else ema).average["weight"]
        torch.testing.assert_close(after, (before + model.weight.detach()) / 2)
