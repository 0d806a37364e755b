"""Print the first-decays table of DESIGN.md section 3 (and the README), from the presets.

Each row runs a preset's Config through ``ema_core.init`` / ``update`` on the trajectory
p_0 = 0, p_k = 10 k and reports the effective decay of call k,
``d_k = (p_k - s_k) / (p_k - s_{k-1})`` (0 = copy, 1 = skip), from the raw shadow.

Usage: ``.venv/bin/python scripts/first_decays.py [calls]`` (default 6 calls).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

import ema_core
from ema_core import presets

ROWS: list[tuple[str, str, tuple[Any, ...], dict[str, Any]]] = [
    ("torch swa_utils EMA d=0.9", "swa_utils", (0.9,), {}),
    ("mmengine momentum=0.1", "mmedit", (0.1,), {}),
    ("Keras ema_momentum=0.9", "keras", (0.9,), {}),
    ("timm ModelEmaV3(decay=0.9), step=k", "timm", (0.9,), {}),
    ("timm V3 use_warmup", "timm", (0.9999,), {"use_warmup": True}),
    (
        "ema-pytorch update_after_step=0, update_every=1",
        "ema_pytorch",
        (),
        {"update_after_step": 0, "update_every": 1},
    ),
    ("diffusers use_ema_warmup", "diffusers", (), {"use_ema_warmup": True}),
    ("torch_ema", "torch_ema", (0.9999,), {}),
    ("TF num_updates=k", "tensorflow", (0.9999,), {"num_updates": 1}),
    ("AllenNLP num_updates=k", "allennlp", (), {"num_updates": 1}),
    ("diffusers use_ema_warmup=False", "diffusers", (), {}),
    ("ema-pytorch defaults", "ema_pytorch", (), {}),
    ("mmengine interval=2", "mmedit", (0.1,), {"interval": 2}),
    ("mmengine MomentumAnnealingEMA", "mmedit", (0.0002,), {"gamma": 100}),
    ("EDM2 power function, sigma_rel=0.05", "edm2", (0.05,), {}),
    (
        "ema-pytorch KarrasEMA sigma_rel=0.05, every 1",
        "ema_pytorch_karras",
        (0.05,),
        {"update_every": 1},
    ),
    (
        "EDM2 traditional, 0.5 Mimg half-life, batch 2048",
        "edm2",
        (),
        {"halflife_Mimg": 0.5, "batch_size": 2048},
    ),
    ("torchtitan defaults", "torchtitan", (), {}),
    (
        "torchtitan decay=0.9, update_every_n_steps=2",
        "torchtitan",
        (0.9,),
        {"update_every_n_steps": 2},
    ),
    ("optax ema(0.9) (zero start, raw shadow)", "optax", (0.9,), {}),
    ("Paddle decay=0.9 (zero start, raw shadow)", "paddle", (0.9,), {}),
    ("TF zero_debias, decay=0.9 (raw shadow)", "tensorflow", (0.9,), {"zero_debias": True}),
]


def effective_decays(config: ema_core.Config, calls: int) -> list[float]:
    """The effective decay of calls 1..calls on p_k = 10 k, p_0 = 0 (float64 numpy)."""
    state = ema_core.init({"w": np.zeros(1)}, config)
    out = []
    for k in range(1, calls + 1):
        before = float(state.shadow["w"][0])
        state = ema_core.update(state, {"w": np.full(1, 10.0 * k)}, config)
        out.append((10.0 * k - float(state.shadow["w"][0])) / (10.0 * k - before))
    return out


def _fmt(d: float) -> str:
    if d in (0.0, 1.0):
        return str(int(d))
    return "~0" if d < 5e-6 else f"{d:.5f}".rstrip("0").lstrip("0")


def table(calls: int = 6) -> str:
    """The Markdown table, one row per preset call."""
    lines = [f"| peer / config | preset | calls 1..{calls} |", "|---|---|---|"]
    for label, name, args, kwargs in ROWS:
        config = getattr(presets, name)(*args, **kwargs)
        decays = ", ".join(_fmt(d) for d in effective_decays(config, calls))
        shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        lines.append(f"| {label} | `presets.{name}({', '.join(shown)})` | {decays} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("calls", nargs="?", type=int, default=6, help="calls shown per row")
    calls = parser.parse_args(argv).calls
    if calls < 1:
        parser.error(f"calls must be at least 1, got {calls}")
    print(table(calls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
