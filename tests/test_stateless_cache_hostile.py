"""The stateless call's plan cache against leaves changed behind its back between two calls.

Each scenario warms the cache (the same leaf objects three times in a row: the second call keeps
the plan, the third uses it), changes the leaves the way a user would (``.data =``, conjugate
and negative views on the same storage, ``share_memory_``, a freed storage, ``__setstate__``, keys
swapped, options, decay and step kinds, threads), then makes the next call twice on the same
objects: once with the cache warm, and once more, with every value restored, after
``ema_core._stateless.clear()``. Both must end the same: the same bits in every array the user can
see (bases included: no write where the rule writes nothing), or the same error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import _stateless

torch = pytest.importorskip("torch")

Outcome = tuple[Any, ...]


def _bits(a: Any) -> tuple[str, tuple[int, ...], bytes]:
    """The dtype, shape and bytes of what ``a`` reads as (views' conj/neg bits resolved)."""
    if isinstance(a, torch.Tensor):
        t = a.detach().as_subclass(torch.Tensor).resolve_conj().resolve_neg()
        if t.is_complex():
            t = torch.view_as_real(t)
        flat = t.contiguous().reshape(-1).view(torch.uint8)
        return str(a.dtype), tuple(a.shape), flat.numpy().tobytes()
    return str(a.dtype), tuple(a.shape), np.ascontiguousarray(a).tobytes()


def _values(a: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return a.detach().resolve_conj().resolve_neg().clone()
    return np.array(a, copy=True)


def _restore(a: Any, values: Any) -> None:
    if isinstance(a, torch.Tensor):
        with torch.no_grad():
            a.detach().copy_(values)
    elif a.flags.writeable:  # a read-only array cannot have been written either
        a[...] = values


def _leaves(out: Any) -> list[Any]:
    if isinstance(out, dict):
        return [out[k] for k in sorted(out)]
    if isinstance(out, list | tuple):
        return list(out)
    return [out]


def _outcome(call: Callable[[], Any], watched: dict[str, Any]) -> Outcome:
    """What a call did: the error it raised, or its result (bits, and which watched array each
    returned leaf is), then the bits of every watched array."""
    try:
        out = call()
    except (TypeError, ValueError) as err:
        result: Any = ("raised", type(err).__name__, str(err))
    else:
        names = [next((k for k, w in watched.items() if w is x), None) for x in _leaves(out)]
        result = ("returned", names, [_bits(x) for x in _leaves(out)])
    return result, {k: _bits(a) for k, a in watched.items()}


def _vs_uncached(call: Callable[[], Any], watched: dict[str, Any]) -> Outcome:
    """Run ``call`` as the cache stands, then again on the restored values with the cache
    cleared; assert both outcomes are equal and return it."""
    before = {k: _values(a) for k, a in watched.items()}
    got = _outcome(call, watched)
    for k, a in watched.items():
        _restore(a, before[k])
    _stateless.clear()
    want = _outcome(call, watched)
    assert got[0] == want[0]
    for k in watched:
        assert got[1][k] == want[1][k], k
    return want


def _warm(shadow: Any, params: Any, **kw: Any) -> None:
    """Three calls with the same leaves: the second keeps a plan, the third uses it."""
    _stateless.clear()
    if not {"schedule", "config"} & kw.keys():
        kw.setdefault("decay", 0.75)
    for t in (1, 2, 3):
        ema.ema_update(shadow, params, t, **kw)


def _randn(*shape: int, seed: int = 0, dtype: Any = None) -> Any:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype or torch.float32)


# --- torch: conjugate and negative bits set on the same storage -----------------------------


@pytest.mark.parametrize("side", ["shadow", "params"])
def test_a_leaf_given_its_conjugate_through_data_is_read_as_its_values(side: str) -> None:
    """``t.data = t.data.conj()`` keeps storage, offset, sizes, strides and dtype but sets the
    conj bit: the next call reads (params) or writes (shadow) the leaf as the conjugate view it
    now is, as an uncached call does."""
    s, p = _randn(6, seed=1, dtype=torch.complex64), _randn(6, seed=2, dtype=torch.complex64)
    shadow, params = {"w": s}, {"w": p}
    _warm(shadow, params)
    leaf = s if side == "shadow" else p
    leaf.data = leaf.data.conj()
    assert leaf.is_conj()
    _vs_uncached(lambda: ema.ema_update(shadow, params, 4, decay=0.75), {"s": s, "p": p})


@pytest.mark.parametrize("side", ["shadow", "params"])
def test_a_real_view_given_its_negative_through_data_is_read_as_its_values(side: str) -> None:
    """``z.imag`` is a real strided view of a complex tensor; ``leaf.data = z.conj().imag`` is
    the same storage, offset, sizes and strides with the neg bit set: the next call must read
    or write it as its (negated) values."""
    z = _randn(6, seed=3, dtype=torch.complex64)
    other = _randn(6, seed=4)
    leaf = z.imag
    shadow, params = (
        ({"w": leaf}, {"w": other}) if side == "shadow" else ({"w": other}, {"w": leaf})
    )
    _warm(shadow, params)
    leaf.data = z.conj().imag
    assert leaf.is_neg()
    _vs_uncached(
        lambda: ema.ema_update(shadow, params, 4, decay=0.75), {"z": z, "other": other, "w": leaf}
    )


# --- torch: storage moved or freed in place -----------------------------------------------------


def test_tensors_moved_to_shared_memory_between_calls() -> None:
    """``share_memory_()`` (Hogwild!) moves a storage's data in place: the next call writes the
    shadow where it now lives and reads the params there."""
    s, p = _randn(8, seed=5), _randn(8, seed=6, dtype=torch.bfloat16)
    s2, p2 = _randn(8, seed=7), _randn(8, seed=8)
    shadow, params = [s, s2], [p, p2]
    _warm(shadow, params)
    for t in (s, p, s2, p2):
        t.share_memory_()
    result, _ = _vs_uncached(
        lambda: ema.ema_update(shadow, params, 4, decay=0.75), {"s": s, "s2": s2}
    )
    assert result[1] == ["s", "s2"]  # written in place


def test_a_params_storage_freed_between_calls_raises_as_uncached() -> None:
    """``untyped_storage().resize_(0)`` (FSDP's way of freeing a flat parameter) on a cached
    params tensor: the next call raises the uncached call's ``ValueError`` and writes nothing;
    given its memory back (and values), it updates as uncached."""
    s, p = _randn(16, seed=9), _randn(16, seed=10, dtype=torch.bfloat16)
    shadow, params = {"w": s}, {"w": p}
    _warm(shadow, params)
    kept = p.detach().clone()
    p.untyped_storage().resize_(0)
    result, _ = _vs_uncached(lambda: ema.ema_update(shadow, params, 4, decay=0.75), {"s": s})
    assert result[:2] == ("raised", "ValueError")
    nbytes = kept.untyped_storage().nbytes()
    p.untyped_storage().resize_(nbytes)
    with torch.no_grad():
        p.copy_(kept)
    _warm(shadow, params)
    p.untyped_storage().resize_(0)
    p.untyped_storage().resize_(nbytes)
    with torch.no_grad():
        p.copy_(kept)
    _vs_uncached(lambda: ema.ema_update(shadow, params, 4, decay=0.75), {"s": s, "p": p})


_SHRUNK_CHILD = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import ema_core as ema
    from ema_core import _stateless
    side = sys.argv[1]
    s = torch.zeros(1024)
    p = torch.ones(1024, dtype=torch.float32)
    leaf = s if side == "shadow" else p
    for t in (1, 2, 3):
        ema.ema_update({"w": s}, {"w": p}, t, decay=0.5)
    before = leaf.data_ptr()
    storage = leaf.untyped_storage()
    for n in [2048, 4032, 3072, 1024, 4000, 2000] * 8:  # until the allocator gives it back
        storage.resize_(0)
        storage.resize_(n)
        if leaf.data_ptr() == before:
            break
    same = leaf.data_ptr() == before
    found = []
    for clear in (False, True):
        if clear:
            _stateless.clear()
        try:
            ema.ema_update({"w": s}, {"w": p}, 4, decay=0.5)
        except ValueError as err:
            found.append(str(err))
        else:
            found.append(None)
        print(json.dumps({"same": same, "found": found}), flush=True)
        if found[0] is None:
            os._exit(0)
    os._exit(0)
    """
)


@pytest.mark.parametrize("side", ["params", "shadow"])
def test_a_storage_given_back_fewer_bytes_at_its_address_raises_as_uncached(side: str) -> None:
    """``untyped_storage().resize_(0)`` then ``resize_(n)`` with fewer bytes than the tensor
    needs: the allocator may hand back the same address, so storage, offset, sizes, strides and
    the data pointer all match the cached plan; the call must still refuse the short storage as
    an uncached call does (run in a child process: a write past the end corrupts its heap)."""
    run = subprocess.run(
        [sys.executable, "-c", _SHRUNK_CHILD, side],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
        check=False,
    )
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines, run.stderr[-2000:]
    if not lines[0]["same"]:
        pytest.skip("the allocator gave the storage another address")
    assert lines[0]["found"][0] is not None, "the cached call read/wrote a short storage"
    assert lines[-1]["found"] == [lines[-1]["found"][1]] * 2
    assert run.returncode == 0


def test_the_torch_signature_compares_each_storages_size() -> None:
    """The allocator-free half of the test above (which skips when the allocator moves the
    storage): a storage whose size in bytes changed fails ``same_signature`` even where
    everything else it records is unchanged."""
    from ema_core.backends import torch as backend

    leaves = [_randn(8, seed=31), _randn(3, seed=32)]
    kept = backend.leaf_signature(leaves)
    assert kept is not None and backend.same_signature(kept, leaves)
    assert kept.nbytes == [32, 12]
    resized = kept._replace(nbytes=[kept.nbytes[0], kept.nbytes[1] + 4])
    assert not backend.same_signature(resized, leaves)
    leaves[1].untyped_storage().resize_(8)  # in place: object, offset, sizes and strides kept
    assert not backend.same_signature(kept, leaves)


# --- torch: .data replaced by another layout, swapped and re-pointed tensors -----------------


_DATA_CHANGES: dict[str, Callable[[Any], Any]] = {
    "half": lambda t: t.half(),
    "float64": lambda t: t.to(torch.float64),
    "t": lambda t: t.t(),
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "other": lambda t: torch.full_like(t, 3.0),
    "strided": lambda t: torch.zeros(t.shape[0] * 2, *t.shape[1:])[::2],
}


@pytest.mark.parametrize("change", sorted(_DATA_CHANGES))
@pytest.mark.parametrize("side", ["shadow", "params"])
def test_data_replaced_between_calls(change: str, side: str) -> None:
    """``leaf.data = f(leaf.data)`` (another dtype, a transpose, channels_last, new storage, a
    strided view): the next call is what an uncached call does, error or bits."""
    shape = (2, 2, 2, 2) if change in ("channels_last", "t") else (3, 4)
    if change == "t":
        shape = (4, 4)
    s, p = _randn(*shape, seed=11), _randn(*shape, seed=12)
    s2, p2 = _randn(5, seed=13), _randn(5, seed=14)
    shadow, params = {"a": s, "b": s2}, {"a": p, "b": p2}
    _warm(shadow, params)
    leaf = s if side == "shadow" else p
    leaf.data = _DATA_CHANGES[change](leaf.data)
    watched = {"s": s, "s2": s2, "p": p}
    _vs_uncached(lambda: ema.ema_update(shadow, params, 4, decay=0.75), watched)


def _swap_refused(t1: Any, t2: Any) -> None:
    """What README documents: while a cached plan holds weak references to ``t1`` and ``t2``,
    ``torch.utils.swap_tensors`` refuses them and changes nothing."""
    before = (t1.clone(), t2.clone())
    with pytest.raises(RuntimeError, match="weakref"):
        torch.utils.swap_tensors(t1, t2)
    assert torch.equal(t1, before[0]) and torch.equal(t2, before[1])


def test_two_shadows_swapped_with_swap_tensors() -> None:
    """``torch.utils.swap_tensors`` (what ``module.to`` uses) refuses two cached shadows (the
    cache's weak references, as README says); after ``_stateless.clear()`` the swap goes
    through and each shadow is written where it now lives."""
    s1, s2 = _randn(6, seed=15), _randn(6, seed=16, dtype=torch.float64)
    p1, p2 = _randn(6, seed=17), _randn(6, seed=18)
    shadow, params = {"a": s1, "b": s2}, {"a": p1, "b": p2}
    _warm(shadow, params)
    _swap_refused(s1, s2)
    _stateless.clear()
    torch.utils.swap_tensors(s1, s2)
    assert s1.dtype == torch.float64 and s2.dtype == torch.float32
    _vs_uncached(lambda: ema.ema_update(shadow, params, 4, decay=0.75), {"s1": s1, "s2": s2})


def test_a_model_converted_with_swapped_params_after_cached_calls() -> None:
    """Under ``torch.__future__.set_swap_module_params_on_conversion(True)`` ``module.to`` swaps
    each parameter's contents (``swap_tensors``) instead of assigning ``.data``: refused while
    a cached plan holds the parameters, and after ``_stateless.clear()`` the model converts
    and the next call is the uncached one (a float64 model against float32 shadows)."""
    model = torch.nn.Linear(3, 2)
    params = dict(model.named_parameters())
    shadow = {k: v.detach().clone() for k, v in params.items()}
    _warm(shadow, params)
    flag = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        with pytest.raises(RuntimeError, match=r"swap Linear\.weight"):
            model.to(torch.float64)
        assert params["weight"].dtype == torch.float32
        _stateless.clear()
        model.to(torch.float64)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(flag)
    assert params["weight"].dtype == torch.float64
    watched = {f"s_{k}": v for k, v in shadow.items()}
    _vs_uncached(lambda: ema.ema_update(shadow, params, 4, decay=0.75), watched)


def test_a_large_numpy_owner_moved_by_setstate() -> None:
    """An array of more than 1,000 bytes that owns its memory becomes a view of the state's
    bytes under ``__setstate__`` (new memory, new values): the next call reads the
    params and writes the shadow where they now live."""
    s, p = np.zeros(300), np.ones(300)
    shadow, params = {"w": s}, {"w": p}
    _warm(shadow, params)
    p.__setstate__(np.full(300, 5.0).__reduce__()[2])
    assert p.base is not None
    _vs_uncached(lambda: ema.ema_update(shadow, params, 4, decay=0.75), {"s": s, "p": p})
    s.__setstate__(np.full(300, 2.0).__reduce__()[2])
    assert s.base is not None
    _vs_uncached(lambda: ema.ema_update(shadow, params, 4, decay=0.75), {"s": s, "p": p})


@pytest.mark.parametrize("how", ["shadow_is_params", "params_is_shadow", "shadow_on_other"])
def test_a_shadow_set_onto_params_storage_between_calls(how: str) -> None:
    """``set_`` re-points a cached leaf at the other side's memory: its own params (the very same
    elements: allowed), or another leaf's params (an overlap an uncached call refuses)."""
    s1, s2 = _randn(6, seed=19), _randn(6, seed=20)
    p1, p2 = _randn(6, seed=21), _randn(6, seed=22)
    shadow, params = {"a": s1, "b": s2}, {"a": p1, "b": p2}
    _warm(shadow, params)
    if how == "shadow_is_params":
        s1.set_(p1)
    elif how == "params_is_shadow":
        p1.set_(s1)
    else:
        s1.set_(p2)
    watched = {"s1": s1, "s2": s2, "p1": p1, "p2": p2}
    _vs_uncached(lambda: ema.ema_update(shadow, params, 4, decay=0.75), watched)


def test_inference_mode_toggled_between_calls() -> None:
    """A plan kept outside ``torch.inference_mode`` meets a call inside it, and back."""
    s, p = _randn(6, seed=23), _randn(6, seed=24)
    shadow, params = {"w": s}, {"w": p}
    _warm(shadow, params)

    def inside() -> Any:
        with torch.inference_mode():
            return ema.ema_update(shadow, params, 4, decay=0.75)

    _vs_uncached(inside, {"s": s})
    _warm(shadow, params)
    with torch.inference_mode():
        ema.ema_update(shadow, params, 4, decay=0.75)
        ema.ema_update(shadow, params, 5, decay=0.75)
    _vs_uncached(lambda: ema.ema_update(shadow, params, 6, decay=0.75), {"s": s})


# --- numpy: memory re-pointed under the same object ---------------------------------------------


def test_a_numpy_shadow_view_given_new_memory_by_setstate() -> None:
    """``a.__setstate__(state)`` (what unpickling into an existing array does) gives a view its
    own new memory, same shape, strides, dtype and flags: the next call must write the array,
    not the buffer it was a view of."""
    base = np.zeros(48)
    s = base[8:40]
    p = np.arange(32.0)
    shadow, params = {"w": s}, {"w": p}
    _warm(shadow, params)
    s.__setstate__(s.__reduce__()[2])
    assert s.base is None and s.flags.writeable
    _vs_uncached(
        lambda: ema.ema_update(shadow, params, 4, decay=0.75), {"base": base, "s": s, "p": p}
    )


def test_numpy_params_given_new_values_and_memory_by_setstate() -> None:
    """Params loaded in place with ``p.__setstate__`` (new memory, new values): the next call
    blends the new values, not those of the buffer ``p`` used to view."""
    pbase = np.ones(40)
    p = pbase[4:36]
    s = np.zeros(32)
    shadow, params = {"w": s}, {"w": p}
    _warm(shadow, params)
    p.__setstate__(np.full(32, 9.0).__reduce__()[2])
    assert p.base is None and p.tolist() == [9.0] * 32
    _vs_uncached(lambda: ema.ema_update(shadow, params, 4, decay=0.75), {"s": s, "p": p})


_NUMPY_CHANGES: dict[str, Callable[[np.ndarray, np.ndarray], None]] = {
    "both_reshaped": lambda s, p: (setattr(s, "shape", (2, 3)), setattr(p, "shape", (2, 3))),
    "shadow_reshaped": lambda s, p: setattr(s, "shape", (3, 2)),
    "shadow_byte_swapped": lambda s, p: setattr(s, "dtype", s.dtype.newbyteorder()),
    "params_byte_swapped": lambda s, p: setattr(p, "dtype", p.dtype.newbyteorder()),
    "params_as_int64": lambda s, p: setattr(p, "dtype", np.int64),
    "shadow_as_complex64": lambda s, p: setattr(s, "dtype", np.complex64),
    "params_read_only": lambda s, p: setattr(p.flags, "writeable", False),
}


@pytest.mark.parametrize("change", sorted(_NUMPY_CHANGES))
def test_numpy_metadata_changed_in_place_between_calls(change: str) -> None:
    """``a.shape = ...``, ``a.dtype = ...`` (another byte order, an integer or complex view of
    the same bytes) and a read-only flag on cached arrays: the next call is the uncached one,
    the refusal of a non-native byte order or of unequal shapes included."""
    sbuf, pbuf = np.linspace(-1.0, 1.0, 8), np.linspace(2.0, 3.0, 8)
    s, p = sbuf[1:7], pbuf[2:8]
    shadow, params = {"w": s}, {"w": p}
    _warm(shadow, params)
    _NUMPY_CHANGES[change](s, p)
    watched = {"sbuf": sbuf, "pbuf": pbuf, "s": s}
    _vs_uncached(lambda: ema.ema_update(shadow, params, 4, decay=0.75), watched)


def test_numpy_writeable_flag_toggled_off_and_on() -> None:
    """A cached shadow made read-only (a new array returned, the shadow untouched; ``copy=False``
    refused) and writeable again (written in place again), and read-only params (only read)."""
    s, p = np.zeros(8), np.arange(8.0)
    shadow, params = {"w": s}, {"w": p}
    _warm(shadow, params)
    s.flags.writeable = False
    p.flags.writeable = False
    result, _ = _outcome(lambda: ema.ema_update(shadow, params, 4, decay=0.75), {"s": s})
    assert result[:2] == ("returned", [None])
    s.flags.writeable = True
    _vs_uncached(lambda: ema.ema_update(shadow, params, 5, decay=0.75), {"s": s})
    s.flags.writeable = False
    _warm(shadow, params, copy=None)
    result, _ = _vs_uncached(
        lambda: ema.ema_update(shadow, params, 6, decay=0.75, copy=False), {"s": s}
    )
    assert result[:2] == ("raised", "ValueError")


# --- nests: other objects, other keys, views of the other side ----------------------------------


_NEST_CHANGES: dict[str, Callable[[dict[str, Any], dict[str, Any], Any], None]] = {
    "replaced": lambda s, p, new: s.update(a=new([1.0, 1.0, 1.0])),
    "shadow_keys_swapped": lambda s, p, new: s.update(a=s["b"], b=s["a"]),
    "both_keys_swapped": lambda s, p, new: (
        s.update(a=s["b"], b=s["a"]),
        p.update(a=p["b"], b=p["a"]),
    ),
    "shadow_is_its_params": lambda s, p, new: s.update(a=p["a"]),
    "shadow_views_other_params": lambda s, p, new: s.update(a=p["b"][:]),
    "params_view_shadow": lambda s, p, new: p.update(b=s["b"][:]),
    "params_view_other_shadow": lambda s, p, new: p.update(b=s["a"][:]),
}


@pytest.mark.parametrize("change", sorted(_NEST_CHANGES))
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_entries_replaced_swapped_or_aliased_between_calls(lib: str, change: str) -> None:
    """A dict shadow whose entries are replaced by same-shape objects, the same objects under
    swapped keys, a shadow entry that is its params (or a view of another params leaf), and
    params that are a view of the shadow: each next call is the uncached one."""
    new: Callable[..., Any] = np.array if lib == "numpy" else torch.tensor
    s = {"a": new([1.0, 2.0, 3.0]), "b": new([4.0, 5.0, 6.0])}
    p = {"a": new([7.0, 8.0, 9.0]), "b": new([0.5, 0.25, 0.125])}
    watched = {"sa": s["a"], "sb": s["b"], "pa": p["a"], "pb": p["b"]}
    _warm(s, p)
    _NEST_CHANGES[change](s, p, new)
    watched.update({f"s_{k}": v for k, v in s.items()})
    _vs_uncached(lambda: ema.ema_update(s, p, 4, decay=0.75), watched)


# --- options, decay kinds and step kinds changing between calls ---------------------------------


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_copy_decay_and_step_kinds_changing_between_calls(lib: str) -> None:
    """The next call after a warm cache changes ``copy=``, the decay's kind (float, 0-d array of
    either float dtype, exactly 0 and 1, out of range) or the step's kind (int, 0-d integer
    array, negative): each is what an uncached call does."""
    xp: Any = np if lib == "numpy" else torch
    s = {"a": xp.asarray([1.0, -2.0, 3.0]), "n": xp.asarray([1, 2, 3])}
    p = {"a": xp.asarray([0.5, 4.0, -1.0]), "n": xp.asarray([7, 8, 9])}
    watched = {"sa": s["a"], "sn": s["n"], "pa": p["a"]}
    f32, f64, i32 = (getattr(xp, n) for n in ("float32", "float64", "int32"))
    calls: list[dict[str, Any]] = [
        {"decay": 0.75, "copy": True},
        {"decay": 0.75, "copy": False},
        {"decay": 0.75, "copy": None},
        {"decay": xp.asarray(0.75, dtype=f64)},
        {"decay": xp.asarray(0.75, dtype=f32)},
        {"decay": xp.asarray(1.0, dtype=f64)},
        {"decay": 1.0},
        {"decay": 0.0},
        {"decay": xp.asarray(1.5, dtype=f64)},
        {"decay": 1.5},
        {"schedule": lambda t: 1.0 - 1.0 / (float(t) + 1.0), "step": xp.asarray(6, dtype=i32)},
        {"schedule": lambda t: 1.0 - 1.0 / (float(t) + 1.0), "step": 7},
        {"decay": 0.75, "step": -1},
        {"decay": 0.75, "step": xp.asarray(-2)},
        {"decay": 0.75, "step": 2.5},
    ]
    previous: dict[str, Any] = {"decay": 0.5}
    for kw in calls:
        _warm(s, p, **previous)
        args = dict(kw)
        step = args.pop("step", 4)
        result, _ = _vs_uncached(
            lambda args=args, step=step: ema.ema_update(s, p, step, **args), watched
        )
        if result[0] == "returned":
            previous = args


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_nan_params_under_guard_finite_after_a_plan_kept_without_it(lib: str) -> None:
    """A plan kept for ``Config(guard_finite=False)`` calls, then the params turn NaN and the
    next call asks for ``guard_finite=True``: refused with nothing written, as uncached; the
    same call without the guard blends the NaN, as uncached."""
    xp: Any = np if lib == "numpy" else torch
    s, p = xp.asarray([1.0, 2.0, 3.0]), xp.asarray([4.0, 5.0, 6.0])
    shadow, params = {"w": s}, {"w": p}
    _warm(shadow, params, config=ema.Config(schedule=0.75))
    p[1] = float("nan")
    guarded = ema.Config(schedule=0.75, guard_finite=True)
    result, _ = _vs_uncached(lambda: ema.ema_update(shadow, params, 4, config=guarded), {"s": s})
    assert result[:2] == ("raised", "ValueError")
    _warm(shadow, params, config=ema.Config(schedule=0.75))
    _vs_uncached(
        lambda: ema.ema_update(shadow, params, 4, config=ema.Config(schedule=0.75)), {"s": s}
    )


# --- threads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_threads_averaging_one_params_nest_into_their_own_shadows(lib: str) -> None:
    """Several EMAs of one model, each in its own thread (one params nest shared and only read,
    one shadow nest per thread, each with its own decay): every shadow ends with the bits of the
    same calls made one by one with the cache cleared before each."""
    xp: Any = np if lib == "numpy" else torch
    gen = np.random.default_rng(0)
    params = {k: xp.asarray(gen.standard_normal(64)) for k in "abc"}
    decays = [0.5, 0.75, 0.9, 0.99]
    shadows = [{k: xp.asarray(np.zeros(64)) for k in "abc"} for _ in decays]
    want = [{k: xp.asarray(np.zeros(64)) for k in "abc"} for _ in decays]
    _stateless.clear()
    start = threading.Barrier(len(decays))

    def worker(shadow: dict[str, Any], decay: float) -> None:
        start.wait()
        for t in range(1, 41):
            ema.ema_update(shadow, params, t, decay=decay)

    threads = [
        threading.Thread(target=worker, args=(s, d)) for s, d in zip(shadows, decays, strict=True)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for shadow, decay in zip(want, decays, strict=True):
        for t in range(1, 41):
            _stateless.clear()
            ema.ema_update(shadow, params, t, decay=decay)
    for got, ref in zip(shadows, want, strict=True):
        assert all(_bits(got[k]) == _bits(ref[k]) for k in "abc")
