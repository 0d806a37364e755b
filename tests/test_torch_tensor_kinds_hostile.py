"""The kinds of torch tensors users hand to ``ema_update`` and to the torch ``EMA``: autograd
leaves and ``nn.Parameter`` shadows, inference tensors, conjugate and negative views, complex,
float8, bool and unsigned leaves, sparse and nested layouts, 0-d and empty tensors, broadcast
and overlapping views, grown storage, tied tensors, ``torch.Tensor`` subclasses, meta tensors
and ``torch.device("cpu", 0)``. Each either gives the update rule's numbers (against torch's
own ``lerp`` for a one-dtype group, the generic core or the numpy path elsewhere, bit for bit),
or is refused by name before anything is written (README "Choices" and "Errors")."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import array_api_compat.torch as xp  # noqa: E402

import ema_core as ema  # noqa: E402
from ema_core import _core  # noqa: E402
from ema_core.torch import EMA  # noqa: E402

DECAY = 0.9
_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: Any) -> Any:
    """The bits of a tensor (negative and conjugate views resolved, complex as pairs)."""
    t = t.detach().as_subclass(torch.Tensor).resolve_neg().resolve_conj()
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.contiguous().view(_INT[t.element_size()]).clone()


def _same(a: Any, b: Any) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _core_ref(s: Any, p: Any, decay: float = DECAY) -> Any:
    """The generic core's blend (the host engine's and the generic route's numbers)."""
    plain = s.detach().as_subclass(torch.Tensor).resolve_neg().resolve_conj().clone()
    return _core.blend(xp, plain, p.detach().resolve_neg().resolve_conj(), decay, 1.0 - decay)


def _lerp_ref(s: Any, p: Any, decay: float = DECAY) -> Any:
    """torch's own ``lerp`` (the fused route of a one-dtype float group)."""
    return torch.lerp(s.detach().as_subclass(torch.Tensor).clone(), p.detach(), 1.0 - decay)


# --- autograd leaves and nn.Parameter shadows ------------------------------------------------


def test_params_that_require_grad_are_read_and_their_grads_left_alone() -> None:
    """Params with ``requires_grad=True`` and a ``.grad`` are read as values: the shadow gets
    torch's ``lerp`` bits, does not start requiring grad, and the grads keep their bits."""
    p = torch.randn(6, requires_grad=True)
    p.grad = torch.randn(6)
    grad = p.grad.clone()
    s = torch.zeros(6)
    want = _lerp_ref(s, p)
    out = ema.ema_update(s, p, 1, decay=DECAY)
    assert out is s and _same(out, want) and not out.requires_grad
    assert torch.equal(p.grad, grad)


def test_a_parameter_shadow_is_written_in_place_and_stays_a_parameter() -> None:
    """An ``nn.Parameter`` (requires_grad) shadow takes the write in place: the same object,
    still a ``Parameter``, its version counter moved, the values torch's ``lerp`` gives."""
    s = torch.nn.Parameter(torch.zeros(5))
    version = s._version
    p = torch.randn(5)
    want = _lerp_ref(s, p)
    out = ema.ema_update(s, p, 1, decay=DECAY)
    assert out is s and isinstance(out, torch.nn.Parameter) and s.requires_grad
    assert s._version > version
    assert _same(out, want)


def test_a_parameter_shadow_over_bf16_params_takes_the_host_engine_in_place() -> None:
    """A ``Parameter`` shadow over bf16 params (the host engine, writing through a numpy view
    of its memory) is written in place with the generic core's bits, and its version counter
    moves as torch's own in-place ops move it."""
    s = torch.nn.Parameter(torch.zeros(9))
    version = s._version
    p = torch.randn(9, dtype=torch.bfloat16)
    want = _core_ref(s, p)
    out = ema.ema_update(s, p, 1, decay=DECAY)
    assert out is s and isinstance(out, torch.nn.Parameter) and s._version > version
    assert _same(s, want)


def test_a_parameter_shadow_under_copy_true_is_left_as_it_was() -> None:
    """``copy=True`` over a ``Parameter`` shadow never mutates it and returns the same numbers
    as the in-place update."""
    s = torch.nn.Parameter(torch.randn(5))
    before = s.detach().clone()
    p = torch.randn(5)
    out = ema.ema_update({"w": s}, {"w": p}, 3, decay=DECAY, copy=True)
    assert torch.equal(s.detach(), before)
    assert _same(out["w"], _lerp_ref(before, p))


# --- inference tensors -----------------------------------------------------------------------


def test_an_inference_shadow_outside_inference_mode_gets_a_new_array() -> None:
    """An inference tensor outside ``inference_mode`` counts as read-only: ``copy=None`` returns
    a new tensor with the rule's bits and leaves it alone; ``copy=False`` is a ``ValueError``
    naming the shadow and changes nothing."""
    with torch.inference_mode():
        s = torch.randn(5)
        p = torch.randn(5)
    before = s.clone()
    out = ema.ema_update(s, p, 1, decay=DECAY)
    assert out is not s and torch.equal(s, before)
    assert _same(out, _lerp_ref(before, p))
    with pytest.raises(ValueError, match=r"shadow.*inference"):
        ema.ema_update(s, p, 2, decay=DECAY, copy=False)
    assert torch.equal(s, before)


def test_inference_params_are_read_into_an_ordinary_shadow() -> None:
    """Params made under ``inference_mode`` are only read: a plain shadow is written in place."""
    with torch.inference_mode():
        p = torch.randn(5, dtype=torch.bfloat16)
    s = torch.zeros(5)
    want = _core_ref(s, p)
    out = ema.ema_update(s, p, 1, decay=DECAY)
    assert out is s and _same(out, want)


# --- conjugate / negative views and complex leaves -------------------------------------------


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_leaves_equal_the_numpy_path_bit_for_bit(dtype: Any) -> None:
    """Complex leaves go through the engine's numpy blocks: the same bits as ``ema_update`` on
    numpy copies of the tensors, over two steps."""
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(33, generator=gen, dtype=dtype)
    p = torch.randn(33, generator=gen, dtype=dtype)
    sn, pn = s.numpy().copy(), p.numpy().copy()
    for step in (1, 2):
        sn = ema.ema_update(sn, pn, step, decay=DECAY)
        out = ema.ema_update(s, p, step, decay=DECAY)
        assert out is s
    assert np.array_equal(s.numpy(), sn)


def test_conjugate_params_are_read_as_their_values() -> None:
    """``x.conj()`` params (the conj bit set, no copy) give the numbers of their resolved
    values."""
    p = torch.randn(7, dtype=torch.complex64).conj()
    s = torch.randn(7, dtype=torch.complex64)
    want = _core_ref(s, p.resolve_conj())
    out = ema.ema_update(s, p, 1, decay=DECAY)
    assert out is s and _same(out, want)


def test_a_conjugate_shadow_is_updated_through_its_view() -> None:
    """A conj-bit shadow is written in place as the view it is: read through the view, it
    holds the rule's numbers, and the base tensor holds their conjugates; a second call (the
    stateless plan cache) keeps doing so."""
    base = torch.randn(7, dtype=torch.complex64)
    s = base.conj()
    p = torch.randn(7, dtype=torch.complex64)
    want = _core_ref(s, p)
    out = ema.ema_update({"a": s}, {"a": p}, 1, decay=DECAY)
    assert out["a"] is s and _same(s, want)
    out = ema.ema_update(out, {"a": p}, 2, decay=DECAY)
    assert _same(base.conj(), _core_ref(want, p))


def test_a_conjugate_shadow_with_a_0d_decay_tensor_is_updated_through_its_view() -> None:
    """The same conj-bit shadow under a 0-d float64 decay tensor (the device-decay selects)
    holds the generic core's bits for that decay."""
    base = torch.zeros(5, dtype=torch.complex64)
    s = base.conj()
    p = torch.randn(5, dtype=torch.complex64)
    want = _core_ref(s, p)
    ema.ema_update(s, p, 1, decay=torch.tensor(DECAY, dtype=torch.float64))
    assert _same(s, want)


def test_negative_params_are_read_as_their_values() -> None:
    """``torch._neg_view`` params (the neg bit set) give the numbers of their resolved values,
    on the fused route (fp32 over fp32) and on the host engine's (fp32 over bf16)."""
    for pdtype, ref in ((torch.float32, _lerp_ref), (torch.bfloat16, _core_ref)):
        p = torch._neg_view(torch.randn(9).to(pdtype))
        s = torch.zeros(9)
        want = ref(s, p.resolve_neg())
        out = ema.ema_update(s, p, 1, decay=DECAY)
        assert out is s and _same(out, want), pdtype


def test_a_negative_shadow_over_bf16_params_is_updated_through_its_view() -> None:
    """A neg-bit fp32 shadow over bf16 params (the generic route) holds the rule's numbers read
    through the view; its base holds their negatives."""
    base = torch.randn(9)
    s = torch._neg_view(base)
    p = torch.randn(9, dtype=torch.bfloat16)
    want = _core_ref(s, p)
    ema.ema_update(s, p, 1, decay=DECAY)
    assert _same(-base, want)


def test_a_negative_shadow_of_the_params_dtype_is_updated_or_refused_before_any_write() -> None:
    """A neg-bit fp32 shadow beside a float64 leaf: either both are updated (read through the
    view, as a conj-bit shadow is), or the call is refused before any leaf changes. Today the
    fused ``lerp_`` raises ``RuntimeError`` after the float64 group was written."""
    a = torch.zeros(5, dtype=torch.float64)
    base = torch.randn(3)
    b = torch._neg_view(base)
    pa, pb = torch.ones(5, dtype=torch.float64), torch.randn(3)
    want_a, want_b = _lerp_ref(a, pa), _core_ref(b, pb)
    try:
        ema.ema_update({"a": a, "b": b}, {"a": pa, "b": pb}, 1, decay=DECAY)
    except (TypeError, ValueError):
        assert torch.equal(a, torch.zeros(5, dtype=torch.float64))
        return
    assert _same(a, want_a)
    assert torch.allclose(-base, want_b, rtol=0, atol=1e-6)


# --- float8, bool and unsigned leaves --------------------------------------------------------


def test_a_float8_leaf_in_ema_update_is_a_type_error_before_any_write() -> None:
    """The ``EMA`` class refuses a float8 tensor to average by name (torch has no float8
    arithmetic); ``ema_update`` given one beside a float32 leaf must refuse it the same way
    (``TypeError`` naming it) before the float32 leaf changes."""
    a = torch.zeros(5)
    s8 = torch.zeros(3).to(torch.float8_e4m3fn)
    p8 = torch.ones(3).to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match=r"shadow\['b'\]|params\['b'\]"):
        ema.ema_update({"a": a, "b": s8}, {"a": torch.ones(5), "b": p8}, 1, decay=DECAY)
    assert torch.equal(a, torch.zeros(5))


def test_a_float32_shadow_over_float8_params_is_a_type_error_naming_them() -> None:
    """A float32 shadow over float8 params passes the dtype-pair check (a real float for a real
    float) and then fails inside torch's promotion; it must be a ``TypeError`` naming the params
    before any write."""
    a = torch.zeros(5)
    s = torch.zeros(3)
    p8 = torch.ones(3).to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match=r"params\['b'\]"):
        ema.ema_update({"a": a, "b": s}, {"a": torch.ones(5), "b": p8}, 1, decay=DECAY)
    assert torch.equal(a, torch.zeros(5)) and torch.equal(s, torch.zeros(3))


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint16, torch.uint32, torch.uint64])
@pytest.mark.parametrize("decay", [DECAY, 1.0])
def test_bool_and_unsigned_leaves_take_the_params_bits(dtype: Any, decay: float) -> None:
    """Bool and unsigned leaves (uint16/32/64, which torch barely computes with) are copied from
    the params bit for bit, in place, also at a decay of 1."""
    top = {torch.bool: 1, torch.uint16: 2**16 - 1, torch.uint32: 2**32 - 1}.get(dtype, 2**63)
    s = torch.zeros(3, dtype=dtype)
    p = torch.tensor([top, 0, 1], dtype=dtype)
    out = ema.ema_update(s, p, 1, decay=decay)
    assert out is s and _same(s, p)


# --- layouts: sparse and nested --------------------------------------------------------------


def _quiet(make: Any) -> Any:
    """A tensor from torch's beta/prototype layouts without their ``UserWarning``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make()


def test_sparse_csr_params_are_refused_by_name_before_any_write() -> None:
    """Sparse CSR params beside a dense leaf: a ``TypeError`` naming them, nothing written."""
    a = torch.zeros(4)
    p = _quiet(lambda: torch.eye(3).to_sparse_csr())
    with pytest.raises(TypeError, match=r"params\['b'\].*sparse_csr"):
        ema.ema_update(
            {"a": a, "b": torch.zeros(3, 3)}, {"a": torch.ones(4), "b": p}, 1, decay=DECAY
        )
    assert torch.equal(a, torch.zeros(4))


def test_strided_nested_tensors_are_refused_by_name() -> None:
    """The older nested tensors report ``layout == torch.strided``: they must still be refused
    by name (``TypeError``, as sparse and jagged ones are), not reach torch's internals."""
    s = _quiet(lambda: torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)]))
    p = _quiet(lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]))
    with pytest.raises(TypeError, match=r"shadow|params"):
        ema.ema_update(s, p, 1, decay=DECAY)


# --- shapes, views and storage ---------------------------------------------------------------


@pytest.mark.parametrize("pdtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(), (0,), (0, 3), (1,)])
def test_zero_d_and_empty_leaves_are_updated_in_place(shape: tuple[int, ...], pdtype: Any) -> None:
    """0-d and zero-size tensors, on the fused route and the host engine's, are updated in place
    with the rule's bits (nothing to do for an empty one)."""
    s = torch.full(shape, 1.5)
    p = torch.full(shape, 3.25).to(pdtype)
    want = (_lerp_ref if pdtype == torch.float32 else _core_ref)(s, p)
    out = ema.ema_update(s, p, 1, decay=DECAY)
    assert out is s and _same(out, want)


def test_a_broadcast_shadow_gets_a_new_array_and_copy_false_is_refused() -> None:
    """An ``expand``ed shadow (stride 0) is read-only: ``copy=None`` returns a new tensor with
    the rule's bits, its base untouched; ``copy=False`` is a ``ValueError`` naming the
    shadow."""
    base = torch.randn(1, 4)
    s = base.expand(3, 4)
    p = torch.randn(3, 4)
    before = base.clone()
    out = ema.ema_update(s, p, 1, decay=DECAY)
    assert out is not s and torch.equal(base, before)
    assert _same(out, _lerp_ref(s.contiguous(), p))
    with pytest.raises(ValueError, match=r"shadow.*broadcast"):
        ema.ema_update(s, p, 1, decay=DECAY, copy=False)
    assert torch.equal(base, before)


@pytest.mark.parametrize("pdtype", [torch.float32, torch.bfloat16])
def test_broadcast_params_are_read_as_their_values(pdtype: Any) -> None:
    """``expand``ed params (stride 0) are only read: the shadow gets the numbers of their
    contiguous copy."""
    p = torch.randn(1, 4).to(pdtype).expand(3, 4)
    s = torch.zeros(3, 4)
    want = (_lerp_ref if pdtype == torch.float32 else _core_ref)(s, p.contiguous())
    out = ema.ema_update(s, p, 1, decay=DECAY)
    assert out is s and _same(out, want)


def test_a_self_overlapping_shadow_is_not_written_in_place() -> None:
    """``base.as_strided((3, 3), (1, 1))`` has 9 elements over 5 memory locations: as for a
    broadcast view, ``copy=None`` must give the ``copy=True`` numbers (a new array, its base
    untouched), not the in-place write where the last element written to a location wins."""
    base = torch.zeros(5)
    s = base.as_strided((3, 3), (1, 1))
    p = torch.arange(9.0).reshape(3, 3)
    want = ema.ema_update(s, p, 1, decay=DECAY, copy=True)
    assert torch.equal(base, torch.zeros(5))
    out = ema.ema_update(s, p, 1, decay=DECAY)
    assert _same(out, want)
    assert torch.equal(base, torch.zeros(5))


def test_a_shadow_in_a_grown_storage_is_updated_where_it_is() -> None:
    """A shadow whose storage was grown (``untyped_storage().resize_``, which may move it) is
    updated in place, with the rule's bits, twice (the plan cache sees the move)."""
    s = torch.zeros(4, 4)
    p = torch.randn(4, 4)
    want = _lerp_ref(s, p)
    ema.ema_update(s, p, 1, decay=DECAY)
    s.untyped_storage().resize_(4 * 4 * 4 * 8)
    want = _lerp_ref(want, p)
    out = ema.ema_update(s, p, 2, decay=DECAY)
    assert out is s and _same(s, want)


def test_tied_shadows_through_a_view_are_refused_naming_both() -> None:
    """Two shadow names over one storage (a tensor and a reshaped view of it, as tied weights
    are) are a ``ValueError`` naming both paths, nothing written; ``copy=True`` computes
    each."""
    w = torch.zeros(4)
    s = {"a": w, "b": w.view(2, 2)}
    p = {"a": torch.randn(4), "b": torch.randn(2, 2)}
    with pytest.raises(ValueError, match=r"shadow\['a'\] and shadow\['b'\] share memory"):
        ema.ema_update(s, p, 1, decay=DECAY)
    assert torch.equal(w, torch.zeros(4))
    out = ema.ema_update(s, p, 1, decay=DECAY, copy=True)
    assert _same(out["b"], _lerp_ref(torch.zeros(2, 2), p["b"]))
    assert torch.equal(w, torch.zeros(4))


def test_tied_params_feed_each_shadow_the_same_numbers() -> None:
    """One params tensor under two names (tied embeddings) is only read: two equal shadows."""
    w = torch.randn(4)
    s = {"a": torch.zeros(4), "b": torch.zeros(4)}
    out = ema.ema_update(s, {"a": w, "b": w}, 1, decay=DECAY)
    assert _same(out["a"], out["b"]) and _same(out["a"], _lerp_ref(torch.zeros(4), w))


# --- subclasses, meta and device spellings ---------------------------------------------------


class _Tagged(torch.Tensor):
    """A minimal ``torch.Tensor`` subclass that forwards every function to torch."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("pdtype", [torch.float32, torch.bfloat16])
def test_a_torch_function_subclass_is_updated_as_plain_tensors_are(pdtype: Any) -> None:
    """Subclass shadow and params (uncached) give the bits plain tensors give, in place, over
    two steps; the shadow keeps its class."""
    gen = torch.Generator().manual_seed(3)
    plain_s = torch.randn(6, generator=gen)
    plain_p = torch.randn(6, generator=gen).to(pdtype)
    s, p = plain_s.clone().as_subclass(_Tagged), plain_p.clone().as_subclass(_Tagged)
    for step in (1, 2):
        out = ema.ema_update(s, p, step, decay=DECAY)
        ema.ema_update(plain_s, plain_p, step, decay=DECAY)
        assert out is s and type(out) is _Tagged
    assert _same(s, plain_s)


class _Wrapped(torch.Tensor):
    """A wrapper subclass (no storage of its own) that unwraps every op to its inner tensor."""

    elem: Any

    @staticmethod
    def __new__(cls, elem: Any) -> Any:
        return torch.Tensor._make_wrapper_subclass(
            cls, elem.shape, dtype=elem.dtype, device=elem.device, strides=elem.stride()
        )

    def __init__(self, elem: Any) -> None:
        self.elem = elem

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        from torch.utils._pytree import tree_map

        def unwrap(x: Any) -> Any:
            return x.elem if isinstance(x, _Wrapped) else x

        def wrap(x: Any) -> Any:
            plain = isinstance(x, torch.Tensor) and not isinstance(x, _Wrapped)
            return _Wrapped(x) if plain else x

        return tree_map(wrap, func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {})))


@pytest.mark.parametrize("pdtype", [torch.float32, torch.bfloat16])
def test_a_torch_dispatch_wrapper_subclass_is_updated_through_its_ops(pdtype: Any) -> None:
    """A ``__torch_dispatch__`` wrapper subclass (its data behind its ops, no memory to view)
    is updated in place through them: the inner tensor holds the rule's bits (torch's
    ``lerp`` for one dtype, the generic core over bf16 params)."""
    inner = torch.zeros(4)
    plain_p = torch.randn(4).to(pdtype)
    s, p = _Wrapped(inner), _Wrapped(plain_p.clone())
    want = (_lerp_ref if pdtype == torch.float32 else _core_ref)(torch.zeros(4), plain_p)
    out = ema.ema_update(
        {"a": torch.zeros(3), "s": s}, {"a": torch.ones(3), "s": p}, 1, decay=DECAY
    )
    assert out["s"] is s and _same(inner, want)


def test_a_meta_tensor_beside_a_cpu_one_is_refused_by_device() -> None:
    """Meta params for a CPU shadow: a ``ValueError`` naming both devices, nothing written."""
    s = torch.zeros(4)
    with pytest.raises(ValueError, match=r"meta"):
        ema.ema_update(s, torch.zeros(4, device="meta"), 1, decay=DECAY)
    assert torch.equal(s, torch.zeros(4))


def test_cpu_index_zero_is_the_cpu() -> None:
    """Tensors on ``torch.device("cpu", 0)`` (and a decay tensor there) mix with plain CPU ones
    and give the plain CPU bits."""
    cpu0 = torch.device("cpu", 0)
    p = torch.randn(5, device=cpu0)
    s = torch.zeros(5, device=cpu0)
    want = _lerp_ref(torch.zeros(5), p)
    assert _same(ema.ema_update(s, p, 1, decay=DECAY), want)
    s2 = torch.zeros(5)
    d = torch.tensor(DECAY, dtype=torch.float64, device=cpu0)
    assert _same(ema.ema_update(s2, p, 1, decay=d), want)


# --- the EMA class ---------------------------------------------------------------------------


def _changed(model: Any) -> None:
    with torch.no_grad():
        for t in model.parameters():
            t.mul_(2).add_(1)


def test_ema_class_averages_complex_and_subclass_parameters() -> None:
    """The ``EMA`` class over a complex64 parameter and a ``torch.Tensor`` subclass parameter:
    each shadow holds the rule's bits after an update (complex through the core, the subclass
    through torch's ``lerp``)."""
    model = torch.nn.Module()
    model.c = torch.nn.Parameter(torch.randn(4, dtype=torch.complex64))
    model.t = torch.nn.Parameter(torch.randn(4).as_subclass(_Tagged))
    averager = EMA(model, decay=DECAY)
    before = {k: v.clone() for k, v in averager.average.items()}
    _changed(model)
    averager.update()
    assert _same(averager.average["c"], _core_ref(before["c"], model.c))
    assert _same(averager.average["t"], _lerp_ref(before["t"], model.t.as_subclass(torch.Tensor)))


def test_ema_class_over_grads_and_inference_built_models_keeps_plain_shadows() -> None:
    """A model with grads keeps them after ``update()``; a model built in ``inference_mode`` is
    averaged into shadows that never require grad nor are inference tensors."""
    model = torch.nn.Linear(3, 2)
    averager = EMA(model, decay=DECAY)
    model(torch.randn(1, 3)).sum().backward()
    grads = [t.grad.clone() for t in model.parameters()]
    averager.update()
    assert all(torch.equal(t.grad, g) for t, g in zip(model.parameters(), grads, strict=True))
    assert not any(a.requires_grad for a in averager.average.values())
    with torch.inference_mode():
        frozen = torch.nn.Linear(3, 2)
    other = EMA(frozen, decay=DECAY)
    other.update()
    assert not any(a.is_inference() or a.requires_grad for a in other.average.values())


def test_ema_class_over_zero_size_and_0d_parameters_swaps_exactly() -> None:
    """An empty parameter and a 0-d one: the 0-d average follows the rule, and ``swap()`` puts
    it in and gives the live value back bit for bit."""
    model = torch.nn.Module()
    model.e = torch.nn.Parameter(torch.zeros(0, 3))
    model.s = torch.nn.Parameter(torch.tensor(2.0))
    averager = EMA(model, decay=DECAY)
    with torch.no_grad():
        model.s.fill_(4.0)
    averager.update()
    want = _lerp_ref(torch.tensor(2.0), torch.tensor(4.0))
    assert _same(averager.average["s"], want) and averager.average["e"].shape == (0, 3)
    with averager.swap():
        assert _same(model.s, want)
    assert torch.equal(model.s.detach(), torch.tensor(4.0))


def test_ema_class_copies_bool_and_unsigned_buffers() -> None:
    """uint16, uint32 and bool buffers are copied from the model at every update, bit for bit."""
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.ones(2))
    model.register_buffer("u16", torch.tensor([1, 2], dtype=torch.uint16))
    model.register_buffer("u32", torch.tensor([3, 4], dtype=torch.uint32))
    model.register_buffer("flag", torch.tensor([True, False]))
    averager = EMA(model, decay=DECAY)
    model.u16.copy_(torch.tensor([2**16 - 1, 0], dtype=torch.uint16))
    model.u32.copy_(torch.tensor([2**32 - 1, 7], dtype=torch.uint32))
    model.flag.copy_(torch.tensor([False, True]))
    averager.update()
    for name in ("u16", "u32", "flag"):
        assert _same(averager.average[name], getattr(model, name)), name


def test_ema_class_over_a_model_on_cpu_index_zero() -> None:
    """A model on ``torch.device("cpu", 0)`` with ``device=`` spelled the same way is an
    ordinary CPU EMA: the rule's bits after an update."""
    model = torch.nn.Linear(3, 2).to(torch.device("cpu", 0))
    averager = EMA(model, decay=DECAY, device=torch.device("cpu", 0))
    before = averager.average["weight"].clone()
    _changed(model)
    averager.update()
    assert _same(averager.average["weight"], _lerp_ref(before, model.weight))


def test_ema_class_swaps_and_copies_into_conjugate_and_negative_buffers() -> None:
    """Buffers that are conj-bit (complex) and neg-bit views are averaged by value, and
    ``swap()`` and ``copy_to`` write the averages through the views: read through them, the
    model holds the averages; after ``swap()`` the live values come back."""
    model = torch.nn.Module()
    cbase = torch.randn(3, dtype=torch.complex64)
    nbase = torch.randn(3)
    model.register_buffer("c", cbase.conj())
    model.register_buffer("n", torch._neg_view(nbase))
    averager = EMA(model, decay=0.5, buffers="average")
    cbase.mul_(2)
    nbase.mul_(2)
    averager.update()
    live = {k: getattr(model, k).resolve_conj().resolve_neg().clone() for k in ("c", "n")}
    with averager.swap():
        for k in ("c", "n"):
            assert _same(getattr(model, k), averager.average[k]), k
    for k in ("c", "n"):
        assert _same(getattr(model, k), live[k]), k
    averager.copy_to(model)
    for k in ("c", "n"):
        assert _same(getattr(model, k), averager.average[k]), k


def test_ema_class_tracks_tied_weights_once() -> None:
    """A weight tied under two names is tracked once (under its first name)."""
    model = torch.nn.Module()
    model.a = torch.nn.Linear(4, 4)
    model.b = torch.nn.Linear(4, 4)
    model.b.weight = model.a.weight
    averager = EMA(model, decay=DECAY)
    assert sorted(averager.average) == ["a.bias", "a.weight", "b.bias"]
