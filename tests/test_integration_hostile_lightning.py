"""The Lightning ``EMACallback`` against a hostile but realistic user: one EMA per part.

Two callbacks with the same decay rule but different ``include`` / ``exclude`` (an EMA of the
encoder, another of the decoder) need two state keys, or Lightning refuses them at ``fit``
("more than one stateful callback") and a checkpoint could hold only one. A callback without
filters keeps the key it always had, so older checkpoints still resume.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")

from ema_core.integrations.lightning import EMACallback  # noqa: E402
from tests._lightning_helpers import (  # noqa: E402
    SCHEDULE,
    WARNINGS,
    Net,
    assert_same,
    loader,
    quiet,  # noqa: F401 (autouse fixture)
    trainer,
)

pytestmark = WARNINGS
ENCODER = ("layer.encoder.weight", "layer.encoder.bias")
DECODER = ("layer.decoder.weight", "layer.decoder.bias")


class EncoderDecoder(Net):
    """``Net`` with its layer as two parts: 4 -> 3 (encoder) -> 2 (decoder)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        parts = OrderedDict(encoder=torch.nn.Linear(4, 3), decoder=torch.nn.Linear(3, 2))
        self.layer = torch.nn.Sequential(parts)


def in_encoder(name: str) -> bool:
    return name.startswith("layer.encoder.")


def _pair() -> tuple[EMACallback, EMACallback]:
    """An EMA of the encoder (a glob) and one of the decoder (a callable), one schedule."""
    return (
        EMACallback(schedule=SCHEDULE, include="layer.encoder.*"),
        EMACallback(schedule=SCHEDULE, exclude=in_encoder),
    )


def _fit(root: Path, epochs: int, ckpt_path: Path | None = None) -> tuple[EMACallback, ...]:
    callbacks = _pair()
    last = pl.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
    run = trainer(root, [*callbacks, last], max_epochs=epochs, enable_checkpointing=True)
    run.fit(EncoderDecoder(), loader(), loader(2), ckpt_path=ckpt_path)
    return callbacks


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_an_ema_per_part_fits_and_each_resumes_bit_for_bit(tmp_path: Path) -> None:
    whole = _fit(tmp_path / "whole", epochs=2)
    first = _fit(tmp_path, epochs=1)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["callbacks"]
    resumed = _fit(tmp_path, epochs=2, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    for part, names in enumerate((ENCODER, DECODER)):
        ema, before, after = whole[part].ema, first[part].ema, resumed[part].ema
        assert ema is not None and before is not None and after is not None
        assert tuple(ema.average) == names
        assert_same(saved[first[part].state_key]["shadow"], before.average)
        assert after.step == ema.step == 16
        assert_same(after.average, ema.average)


def test_filters_enter_the_state_key_only_when_given() -> None:
    plain = EMACallback(decay=0.5)
    assert plain.state_key == (  # the key older checkpoints hold: unchanged
        "EMACallback{'config': \"Config(schedule=Constant(decay=0.5), init='params', "
        "dtype=None, interval=1, compensate=True, non_float='copy', guard_finite=False, "
        "correction='exact', buffers='copy')\"}"
    )
    assert EMACallback(decay=0.5, include=None, exclude=None).state_key == plain.state_key
    encoder = EMACallback(decay=0.5, include="layer.encoder.*")
    decoder = EMACallback(decay=0.5, exclude=in_encoder)
    assert encoder.state_key == plain.state_key[:-1] + ", 'include': 'layer.encoder.*'}"
    assert decoder.state_key == plain.state_key[:-1] + ", 'exclude': 'in_encoder'}"


def test_patterns_from_a_generator_are_kept_for_the_ema_and_the_key(tmp_path: Path) -> None:
    patterns = (p for p in ["layer.encoder.*", "layer.decoder.bias"])  # can be read once
    callback = EMACallback(schedule=SCHEDULE, include=patterns)
    assert callback.state_key.endswith(", 'include': ['layer.encoder.*', 'layer.decoder.bias']}")
    trainer(tmp_path, [callback], max_epochs=1).fit(EncoderDecoder(), loader(), loader(2))
    assert callback.ema is not None
    assert tuple(callback.ema.average) == (*ENCODER, "layer.decoder.bias")
