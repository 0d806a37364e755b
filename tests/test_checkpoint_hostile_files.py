"""Hand-edited, corrupted and hostile checkpoint files: each is refused with a ValueError that
names the file and what is wrong, never a crash, a numpy error or a silent choice."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

import ema_core as ema
from ema_core import _safetensors
from ema_core._atomic import write_atomic
from ema_core.checkpoint import load, save


def write_raw(path, header: bytes, body: bytes = b""):
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header + body)
    return path


def one_tensor(path, spec, body=b""):
    return write_raw(path, json.dumps({"a": spec}).encode(), body)


def test_deeply_nested_header_is_refused_not_a_recursion_error(tmp_path):
    path = write_raw(tmp_path / "deep", b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ValueError, match=r"deep is not a safetensors file: its header"):
        _safetensors.Reader(path)


def test_duplicate_tensor_names_are_refused(tmp_path):
    spec = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    path = write_raw(tmp_path / "dup", f'{{"a":{spec},"a":{spec}}}'.encode(), b"\0" * 4)
    with pytest.raises(ValueError, match=r"dup: the header names 'a' twice"):
        _safetensors.Reader(path)


@pytest.mark.parametrize(
    "shape", [[1] * 65, [0, 10**30], [0, 2**62, 2**62]], ids=["65-dims", "huge-dim", "huge-size"]
)
def test_shapes_numpy_cannot_make_are_refused_when_the_file_opens(tmp_path, shape):
    size = 0 if 0 in shape else 4
    spec = {"dtype": "F32", "shape": shape, "data_offsets": [0, size]}
    path = one_tensor(tmp_path / "f", spec, b"\0" * size)
    with pytest.raises(ValueError, match=r"f: the shape of 'a' .* is not one an array can have"):
        _safetensors.Reader(path)


def saved_numpy(tmp_path):
    path = save(tmp_path / "e.safetensors", ema.init({"w": np.ones(2, np.float32)}))
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


@pytest.mark.parametrize("text", ["\u00b9", "9" * 5000, "01x", " 1"])
def test_odd_format_versions_are_refused_with_the_reason(tmp_path, text):
    header, body = saved_numpy(tmp_path)
    header["__metadata__"]["ema_core.format_version"] = text
    path = write_raw(tmp_path / "v", json.dumps(header).encode(), body)
    with pytest.raises(
        ValueError, match=r"v has ema_core\.format_version = .*not a version 1\.\.1"
    ):
        load(path, ema.init({"w": np.zeros(2, np.float32)}))


def test_a_step_past_int64_is_refused_for_every_like(tmp_path):
    header, body = saved_numpy(tmp_path)
    header["step"]["dtype"] = "U64"
    body = body[:8] + (2**64 - 1).to_bytes(8, "little") + body[16:]
    path = write_raw(tmp_path / "s", json.dumps(header).encode(), body)
    with pytest.raises(ValueError, match=r"s: 'step' must be <= 2\*\*63 - 1 \(int64\), got 18446"):
        load(path, ema.init({"w": np.zeros(2, np.float32)}))


def test_two_names_that_unescape_alike_are_refused_by_a_torch_ema(tmp_path):
    """A torch ``EMA``'s names are flat: ``a~1b`` and ``a/b`` are one name there. For a nest
    they are two paths (``tests/test_checkpoint_nest_names_1205.py``), here not in ``like``."""
    torch = pytest.importorskip("torch")
    from ema_core.torch import EMA

    header, body = saved_numpy(tmp_path)
    header["shadow/a~1b"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    header["shadow/a/b"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    path = write_raw(tmp_path / "n", json.dumps(header).encode(), body)
    with pytest.raises(ValueError, match=r"n: the tensors 'shadow/a/b' and 'shadow/a~1b'"):
        load(path, EMA(torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match=r"shadow/a/b"):
        load(path, ema.init({"w": np.zeros(2, np.float32)}))


@pytest.mark.parametrize("name", ["shadow/a~2", "shadow/a~"])
def test_a_name_that_is_not_escaped_as_save_escapes_is_refused(tmp_path, name):
    header, body = saved_numpy(tmp_path)
    header[name] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    path = write_raw(tmp_path / "n", json.dumps(header).encode(), body)
    with pytest.raises(
        ValueError, match=r"n holds a tensor '.*': a '~' must be followed by 0 or 1"
    ):
        load(path, ema.init({"w": np.zeros(2, np.float32)}))


def test_replacing_a_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"old")
    os.chmod(path, 0o600)
    write_atomic(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
