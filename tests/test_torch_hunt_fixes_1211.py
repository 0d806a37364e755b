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


def test_a_tied_model_loaded_with_assign_true_is_not_refused():
    torch.manual_seed(0)
    model = _Tied()
    ema = EMA(model, decay=0.5)
    ema.update()
    saved = {k: v.clone() + 1.0 for k, v in model.state_dict().items()}
    saved["head.weight"] = saved["emb.weight"]  # one tensor under both names, as a tied save
    model.load_state_dict(saved, assign=True)  # each name gets its own Parameter, one memory
    assert model.head.weight is not model.emb.weight
    assert model.head.weight.data_ptr() == model.emb.weight.data_ptr()
    before = ema.average["emb.weight"].clone()
    ema.update()
    ema.update()  # watched again from the new objects: nothing refused
    torch.testing.assert_close(
        ema.average["emb.weight"], (before + 3 * saved["emb.weight"]) / 4, rtol=0, atol=1e-6
    )


def test_a_buffer_under_two_modules_survives_a_conversion_that_unties_it():
    model = torch.nn.Module()
    model.a, model.b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    shared = torch.zeros(2)
    model.a.register_buffer("x", shared)
    model.b.register_buffer("x", shared)
    ema = EMA(model, decay=0.5)
    ema.update()
    model.to(torch.float64)  # torch re-creates each module's buffers apart
    ema.update()
    assert ema.average["a.x"].dtype == torch.float64


def test_an_ema_unpickled_from_before_ties_were_watched_still_updates():
    import pickle

    model = _Tied()
    ema = EMA(model, decay=0.5)
    ema.update()
    del ema._bound.watch.aliased  # as a Watch pickled before 2026-12-05 holds none
    del ema._bound.aliases  # nor its Binding (the class default: no ties)
    assert ema._bound.watch.same()  # nothing changed, and no tie to read
    _, ema2 = pickle.loads(pickle.dumps((model, ema)))
    ema2.update()
    assert list(ema2._bound.aliases) == [] and ema2.names == ("emb.weight",)


def test_an_assign_loaded_tie_is_exported_and_its_later_split_refused():
    from ema_core import checkpoint

    model = _Tied()
    ema = EMA(model, decay=0.5)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    saved["head.weight"] = saved["emb.weight"]
    model.load_state_dict(saved, assign=True)  # two Parameters over one memory
    ema.update()
    exported = checkpoint.export(ema, format="state_dict")
    assert sorted(exported) == ["emb.weight", "head.weight"]
    _Tied().load_state_dict(exported)  # strict: loads into a tied model
    model.head.weight.data = torch.full((5, 3), 9.0)  # the same object, memory of its own
    with pytest.raises(ValueError, match=r"'head\.weight' was another name"):
        ema.update()


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype")
def test_an_excluded_tensor_over_a_tracked_ones_memory_stays_out_of_exports_and_copies():
    from ema_core import checkpoint

    model = torch.nn.Module()
    model.lin = torch.nn.Linear(2, 2)
    model.fz = torch.nn.Parameter(model.lin.weight.detach(), requires_grad=False)  # same memory
    model.register_buffer("nt", torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]))
    ema = EMA(model, decay=0.5, exclude="fz", buffers="skip")
    ema.update()
    assert sorted(checkpoint.export(ema, format="state_dict")) == ["lin.bias", "lin.weight"]
    target = {k: v.clone() for k, v in model.state_dict().items() if k != "nt"}
    target["fz"] = torch.full((2, 2), 7.0)
    ema.copy_to(target)
    assert torch.equal(target["fz"], torch.full((2, 2), 7.0))
