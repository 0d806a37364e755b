"""Tests that the third mutation-testing audit found missing in the plumbing under every call:
the check before reading a state (``_read_checks``), pytree nodes (``_pytree``), in-place writes
(``_writes``), crash-safe sets of files (``_atomic``) and the safetensors bytes of a checkpoint
(``_safetensors``, ``checkpoint._arrays``, ``_load_file``). Each kills a small plausible bug
that the rest of the suite let through; one strict xfail is a bug found on the way."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest

import ema_core as ema
from ema_core import checkpoint
from ema_core._atomic import atomic_paths
from ema_core._safetensors import Reader, write


def _zeros_state(decay: float) -> ema.EMAState:
    """One update of an EMA started at zeros: its weight is ``1 - decay``."""
    config = ema.Config(decay, init="zeros")
    params = {"w": np.ones(2, np.float32)}
    return ema.update(ema.init(params, config), params, config)


def test_a_python_int_weight_of_zero_is_read_as_a_zeros_state() -> None:
    """The host reads a Python int weight (0, as a hand-built state may hold) like a float."""
    state = _zeros_state(0.9)._replace(weight=0)
    with pytest.raises(ValueError, match="has weight 0"):
        ema.average(state, ema.Config(0.9))


def test_a_saved_checkpoints_header_is_padded_to_8_bytes(tmp_path: Path) -> None:
    """safetensors pads the JSON header with spaces to a multiple of 8 bytes (so the tensors
    start aligned); ``save`` writes it so whatever the names' lengths (eight lengths in a row:
    an unpadded header would miss the multiple for most of them)."""
    config = ema.Config(0.9)
    for width in range(1, 9):
        state = ema.init({"w" * width: np.ones(3, np.float32)}, config)
        path = tmp_path / f"s{width}.safetensors"
        checkpoint.save(path, state, config=config)
        data = path.read_bytes()
        n = int.from_bytes(data[:8], "little")
        assert n % 8 == 0, width
        assert json.loads(data[8 : 8 + n])["__metadata__"]


def test_a_header_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    """A header length past 100 MB (the safetensors package's own limit) is refused from the
    8-byte prefix, without reading the header (a sparse file: no 100 MB is written)."""
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as file:
        file.write((100_000_001).to_bytes(8, "little"))
        file.truncate(8 + 100_000_001 + 8)
    with pytest.raises(ValueError, match=r"header length 100000001"):
        Reader(path)


def test_pytree_nodes_with_the_static_field_in_another_slot_do_not_match() -> None:
    """Two nodes of one registered pytree class whose array and str fields trade places have the
    same tree definition but not the same array slots: refused, naming the str field, rather
    than averaging one node's ``a`` with the other's ``b``."""
    jax = pytest.importorskip("jax")

    class Two:
        def __init__(self, a: object, b: object) -> None:
            self.a, self.b = a, b

    jax.tree_util.register_pytree_node(
        Two, lambda t: ((t.a, t.b), None), lambda _, kids: Two(*kids)
    )
    shadow = Two(np.ones(2, np.float32), "static")
    params = Two("static", np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="must be an array, got str"):
        ema.ema_update(shadow, params, 1, decay=0.5)


def test_a_stride_0_axis_of_length_1_is_written_in_place() -> None:
    """A stride of 0 on an axis of length 1 shares no memory between elements (not a broadcast
    view): ``copy=False`` writes such a shadow in place."""
    base = np.zeros(3)
    shadow = np.lib.stride_tricks.as_strided(base, shape=(1, 3), strides=(0, 8))
    assert shadow.flags.writeable
    out = ema.ema_update({"w": shadow}, {"w": np.ones((1, 3))}, 1, decay=0.5, copy=False)
    assert out["w"] is shadow
    assert base.tolist() == [0.5, 0.5, 0.5]


def test_a_one_element_torch_leaf_of_stride_2_is_saved(tmp_path: Path) -> None:
    """``torch.arange(2.)[1::2]`` is one element with stride 2 (contiguous by torch's rule, so
    ``.contiguous()`` keeps the stride); ``init`` keeps it in the shadow. ``save`` writes its
    value, which loads back (it raised: a stride-2 float tensor cannot be viewed as bytes)."""
    torch = pytest.importorskip("torch")
    config = ema.Config(0.9)
    state = ema.init({"w": torch.arange(2.0)[1::2]}, config)
    path = tmp_path / "one.safetensors"
    checkpoint.save(path, state, config=config)
    assert checkpoint.load(path, state, config=config).shadow["w"].tolist() == [1.0]


def test_tied_peer_tensors_of_one_element_and_stride_2_compare_by_bits() -> None:
    """The tied-name check of ``load_peer`` views both tensors as bytes: a one-element tensor
    of stride 2 compares (it raised as ``save`` did)."""
    torch = pytest.importorskip("torch")
    from ema_core.checkpoint._peers_read import _same_bits

    one = torch.arange(2.0)[1::2]
    assert _same_bits(one, torch.tensor([1.0]))
    assert not _same_bits(one, torch.tensor([-1.0]))


def test_a_failed_set_of_renames_keeps_the_file_it_already_replaced(tmp_path: Path) -> None:
    """``atomic_paths`` removes only the new files when a later rename fails: a file that
    existed and was already replaced keeps its (new) content, it is not deleted."""
    kept, blocked = tmp_path / "kept.bin", tmp_path / "blocked"
    kept.write_bytes(b"old")
    blocked.mkdir()  # a rename onto a folder fails
    with pytest.raises(OSError), atomic_paths([kept, blocked]) as (first, second):
        first.write_bytes(b"new")
        second.write_bytes(b"x")
    assert kept.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked", "kept.bin"]


def test_a_big_endian_numpy_shadow_is_saved_with_its_values(tmp_path: Path) -> None:
    """safetensors holds little-endian bytes: a big-endian ``>f4`` shadow is byte-swapped when
    written, so its values (not its raw bytes read the other way) load back."""
    config = ema.Config(0.9)
    like = ema.init({"w": np.zeros(2, np.float32)}, config)
    shadow = np.array([1.5, -2.0], dtype=">f4")
    path = tmp_path / "be.safetensors"
    checkpoint.save(path, like._replace(shadow={"w": shadow}), config=config)
    assert checkpoint.load(path, like, config=config).shadow["w"].tolist() == [1.5, -2.0]


def test_a_file_weight_above_1_is_refused(tmp_path: Path) -> None:
    """A bias-correction weight lies in [0, 1]: a file holding 1.5 (rewritten by hand from a
    saved one) is refused on load."""
    config = ema.Config(0.9)
    state = ema.init({"w": np.ones(2, np.float32)}, config)
    path = tmp_path / "w.safetensors"
    checkpoint.save(path, state, config=config)
    with Reader(path) as reader:
        meta, entries = reader.metadata, reader.entries
        arrays = {n: reader.read(n) for n in entries}
    arrays["weight"] = np.asarray(1.5, dtype=arrays["weight"].dtype)
    specs = [(n, e.code, e.shape) for n, e in entries.items()]
    with open(path, "wb") as file:
        write(file, specs, (arrays[n] for n, _, _ in specs), meta)
    with pytest.raises(ValueError, match=r"'weight' \(bias correction\) must be in \[0, 1\]"):
        checkpoint.load(path, state, config=config)


def test_keys_tilde_1_and_slash_are_two_shadows_of_a_checkpoint(tmp_path: Path) -> None:
    """The keys ``"~1"`` and ``"/"`` are saved as ``shadow/~01`` and ``shadow/~1``; reading the
    names back undoes ``~1`` before ``~0``, so they stay two shadows and load."""
    config = ema.Config(0.9)
    state = ema.init({"~1": np.ones(2, np.float32), "/": np.zeros(2, np.float32)}, config)
    path = tmp_path / "keys.safetensors"
    checkpoint.save(path, state, config=config)
    loaded = checkpoint.load(path, state, config=config)
    assert loaded.shadow["~1"].tolist() == [1.0, 1.0]
    assert loaded.shadow["/"].tolist() == [0.0, 0.0]


def test_namedtuples_with_their_fields_in_another_order_do_not_match() -> None:
    """NamedTuples match by field, never by position: ``(x, y)`` against ``(y, x)`` is refused
    rather than averaging ``x`` with ``y``."""
    first = collections.namedtuple("first", ["x", "y"])
    second = collections.namedtuple("second", ["y", "x"])
    shadow = first(np.zeros(2), np.zeros(2))
    with pytest.raises(TypeError, match="fields"):
        ema.ema_update(shadow, second(np.ones(2), np.ones(2)), 1, decay=0.5)
