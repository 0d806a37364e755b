"""torch fixes of the hunt of 2026-12-05 (second part): ``copy_to(model.parameters())`` (torch_ema's
habit) pointed to ``model.named_parameters()``, which a model with buffers then refused."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ema_core.torch import EMA  # noqa: E402


def test_copy_to_of_bare_tensors_points_to_a_call_that_works():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update()
    with pytest.raises(TypeError, match=r"\(copy_to\(model\)\) or model\.state_dict\(\)$") as err:
        ema.copy_to(model.parameters())
    target = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    suggested = str(err.value).rsplit(" or ", 1)[1]
    assert suggested == "model.state_dict()"
    ema.copy_to(target.state_dict())  # the suggestion, followed, works on a model with buffers
    for name, avg in ema.average.items():
        assert torch.equal(target.state_dict()[name], avg), name


class _Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(5, 3)
        self.head = torch.nn.Linear(3, 5, bias=False)
        self.head.weight = self.emb.weight


def test_a_tie_undone_after_the_ema_was_built_is_refused_before_any_write():
    torch.manual_seed(0)
    model = _Tied()
    ema = EMA(model, decay=0.5)
    assert ema.names == ("emb.weight",)
    model.head.weight = torch.nn.Parameter(model.emb.weight.detach().clone())  # untied
    with torch.no_grad():
        model.emb.weight.fill_(2.0)
    before = {n: a.clone() for n, a in ema.average.items()}
    with pytest.raises(ValueError, match=r"'head\.weight' was another name of the tracked tensor "
                       r"'emb\.weight'.*untied after the EMA was built"):  # fmt: skip
        ema.update()
    assert all(torch.equal(ema.average[n], a) for n, a in before.items())


def test_both_names_tied_to_one_new_tensor_are_followed():
    torch.manual_seed(0)
    model = _Tied()
    ema = EMA(model, decay=0.5)
    old = model.emb.weight.detach().clone()
    shared = torch.nn.Parameter(torch.full((5, 3), 4.0))
    model.emb.weight = shared
    model.head.weight = shared  # tied again, as tie_weights() after a resize does
    ema.update()
    torch.testing.assert_close(ema.average["emb.weight"], (old + 4.0) / 2, rtol=0, atol=1e-6)
    with ema.swap():
        assert model.head.weight is model.emb.weight
    ema.update()  # still watched: nothing raised


def test_an_alias_whose_module_was_removed_is_dropped():
    model = _Tied()
    ema = EMA(model, decay=0.5)
    model.head = torch.nn.Identity()
    ema.update()
    assert ema.names == ("emb.weight",)


def test_ties_are_watched_through_a_whole_model_checkpoint_wrapper_and_shared_blocks():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    model = checkpoint_wrapper(_Tied())
    ema = EMA(model, decay=0.5)
    ema.update()  # the wrapper's own names are no paths: nothing refused
    inner = model._checkpoint_wrapped_module
    inner.head.weight = torch.nn.Parameter(inner.emb.weight.detach().clone())
    with pytest.raises(ValueError, match=r"_checkpoint_wrapped_module\.head\.weight' was another"):
        ema.update()
    block = torch.nn.Linear(2, 2)
    shared = torch.nn.Sequential(block, torch.nn.ReLU(), block)  # one block under two names
    ema = EMA(shared, decay=0.5)
    ema.update()
    shared[2] = torch.nn.Linear(2, 2)  # the second name given a block of its own
    with pytest.raises(ValueError, match=r"'2\.weight' was another name of the tracked tensor"):
        ema.update()


@pytest.mark.parametrize(
    ("decay", "torch_gives", "core_gives"), [(0.5, "nan", "inf"), (0.3, "nan", "nan")]
)
def test_torch_lerp_at_decay_one_half_gives_nan_for_an_infinite_param_as_the_readme_says(
    decay, torch_gives, core_gives
):
    import numpy as np

    import ema_core as ema

    config = ema.Config(schedule=decay)
    got = {}
    for name, zeros, inf in (
        ("torch", torch.zeros(1), torch.full((1,), float("inf"))),
        ("core", np.zeros(1, np.float32), np.full(1, np.inf, np.float32)),
    ):
        state = ema.update(ema.init({"w": zeros}, config), {"w": inf}, config)
        got[name] = float(state.shadow["w"][0])
    assert str(got["torch"]) == torch_gives and str(got["core"]) == core_gives
