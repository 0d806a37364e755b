"""README "Errors": the claims no other test pinned, one test per claim (the comment gives the
README line of the claim)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ema_core as ema
from ema_core import _safetensors
from ema_core.checkpoint import save


# README 1659: integer and bool leaves need equal dtypes (bool is not uint8), checked before any
# write; the message names the leaf's path and both dtypes
@pytest.mark.parametrize(("shadow_dtype", "params_dtype"), [(bool, np.uint8), (np.uint8, bool)])
def test_bool_and_integer_leaves_need_equal_dtypes(shadow_dtype: type, params_dtype: type) -> None:
    shadow = {"w": np.zeros(2), "b": np.zeros(2, shadow_dtype)}
    params = {"w": np.ones(2), "b": np.ones(2, params_dtype)}
    with pytest.raises(TypeError, match=r"shadow\['b'\] has dtype \w+ but params\['b'\] is \w+"):
        ema.ema_update(shadow, params, 1, decay=0.5)
    assert shadow["w"].tolist() == [0.0, 0.0]  # the leaf before it was not written


# README 1689: `Config(interval=...)` is at most 2**63 - 1
def test_config_interval_is_at_most_2_63_minus_1() -> None:
    assert ema.Config(interval=2**63 - 1).interval == 2**63 - 1
    with pytest.raises(ValueError, match=r"Config\.interval must be an int in \[1, 2\*\*63 - 1\]"):
        ema.Config(interval=2**63)


def _saved(tmp_path: Path) -> tuple[Path, dict[str, Any], bytes]:
    path = save(tmp_path / "ok.safetensors", ema.init({"w": np.ones(2, np.float32)}))
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return path, json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _moved(tmp_path: Path, name: str, offsets: list[int]) -> Path:
    """The saved checkpoint with its 'weight' tensor moved to the data ``offsets``."""
    _, header, body = _saved(tmp_path)
    header["weight"]["data_offsets"] = offsets
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    end = max(max(spec["data_offsets"]) for k, spec in header.items() if k != "__metadata__")
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(len(text).to_bytes(8, "little") + text + body.ljust(end, b"\0")[:end])
    return path


# README 1699: `load` refuses offsets that do not tile the data (a gap, or two tensors over the
# same bytes), naming the file and the tensor
def test_offsets_that_do_not_tile_the_data_are_refused(tmp_path: Path) -> None:
    path, header, _ = _saved(tmp_path)
    with _safetensors.Reader(path):  # the file as saved opens
        pass
    spans = {k: v["data_offsets"] for k, v in header.items() if k != "__metadata__"}
    size = spans["weight"][1] - spans["weight"][0]
    last = max(end for _, end in spans.values())
    gap = _moved(tmp_path, "gap", [last + 8, last + 8 + size])
    with pytest.raises(ValueError, match=r"gap\.safetensors: tensor 'weight' starts at byte"):
        _safetensors.Reader(gap)
    other = next(start for k, (start, _) in spans.items() if k != "weight")
    overlap = _moved(tmp_path, "overlap", [other, other + size])
    with pytest.raises(ValueError, match=r"overlap\.safetensors: tensor '[^']+' starts at byte"):
        _safetensors.Reader(overlap)


# README 1715: the post-hoc CLI creates the missing parent folders of `--out`
def test_the_cli_creates_missing_parent_folders_of_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ema_core.posthoc import save_snapshot
    from ema_core.posthoc.__main__ import main

    for step in (10, 20):
        for sigma_rel in (0.05, 0.10):
            save_snapshot(tmp_path / "snaps", {"w": np.ones(2)}, step=step, sigma_rel=sigma_rel)
    out = tmp_path / "new" / "deeper" / "ema.safetensors"
    code = main([str(tmp_path / "snaps"), "--sigma-rel", "0.07", "--out", str(out)])
    assert not code and out.is_file(), capsys.readouterr().err
