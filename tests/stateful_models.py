"""Helpers of tests/test_stateful_ema.py: the model, a float64 model of what its EMA must
hold (the README's update rule, tensor by tensor, with an error bound from the dtypes) and
byte snapshots."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

import ema_core as ema
from ema_core._config_text import config_text
from ema_core.torch import EMA
from tests.reference import Spec, effective_decay

# each submodule's dtype outside model.to(torch.float64)
ORIGINAL = {"lin": torch.float32, "bn": torch.float32, "low": torch.bfloat16}
INTS = ("bn.num_batches_tracked", "count")


class Net(nn.Module):
    """A Linear, a BatchNorm1d, a bf16 Linear (the mixed-precision routes), an int buffer."""

    count: torch.Tensor

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)
        self.low = nn.Linear(3, 2).to(torch.bfloat16)
        self.register_buffer("count", torch.tensor([0, 7], dtype=torch.int32))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.from_numpy(rng.uniform(-2, 2, p.shape)))

    def to_original(self) -> None:
        for name, dtype in ORIGINAL.items():
            getattr(self, name).to(dtype)

    def train_step(self, rng: np.random.Generator, scale: float, special: str) -> None:
        """Move every parameter by a random amount (``special``: write an inf or a NaN, or
        ``"fix"`` them), run BatchNorm in train mode and count."""
        params = list(self.parameters())
        with torch.no_grad():
            for p in params:
                p.add_(torch.from_numpy(rng.uniform(-scale, scale, p.shape)).to(p.dtype))
            if special == "fix":
                for p in params:
                    p.nan_to_num_(0.0, 0.0, 0.0)
            elif special != "none":
                p = params[int(rng.integers(len(params)))]
                p.view(-1)[int(rng.integers(p.numel()))] = float(special)
            self.bn.train()
            self.bn(torch.from_numpy(rng.normal(size=(5, 3))).to(self.bn.weight.dtype))
            self.count.add_(1)

    def write(self, kind: str) -> None:
        """A write into every parameter: an optimizer step, in-place ops, a BatchNorm forward."""
        params = list(self.parameters())
        if kind == "sgd":
            for p in params:
                p.grad = torch.ones_like(p)
            torch.optim.SGD(params, lr=0.5).step()
            for p in params:
                p.grad = None
            return
        with torch.no_grad():
            if kind == "inplace":
                for p in params:
                    p.mul_(2).add_(1)
                self.count.add_(5)
            else:
                self.bn.train()
                self.bn(torch.ones(4, 3, dtype=self.bn.weight.dtype))

    def evaluate(self) -> None:
        """A forward of every layer in eval mode (reads only)."""
        self.eval()
        with torch.no_grad():
            y = self.lin(torch.ones(2, 4, dtype=self.lin.weight.dtype))
            self.low(self.bn(y.to(self.bn.weight.dtype)).to(self.low.weight.dtype))
        self.train()


def bits(t: torch.Tensor) -> tuple[str, tuple[int, ...], bytes]:
    """The dtype, shape and bytes of a tensor."""
    flat = t.detach().contiguous().reshape(-1)
    return str(t.dtype), tuple(t.shape), flat.view(torch.uint8).numpy().tobytes()


def snapshot(averager: EMA) -> dict[str, Any]:
    """Every shadow's bits, the step and the weight, as ``state_dict()`` gives them."""
    sd = averager.state_dict()
    out: dict[str, Any] = {n: bits(t) for n, t in sd["shadow"].items()}
    return out | {"step": int(sd["step"]), "weight": float(sd["weight"])}


def bad_state(averager: EMA, kind: str) -> dict[str, Any]:
    """A state dict of ``averager`` that ``load_state_dict`` must refuse."""
    state = dict(averager.state_dict())
    shadows = state["shadow"] = dict(state["shadow"])
    if kind == "weight":
        state["weight"] = torch.tensor(1.5, dtype=torch.float64)
    elif kind == "state_step":
        state["step"] = torch.tensor(-1)
    elif kind == "shape":
        shadows["lin.weight"] = torch.zeros(5, 5)
    elif kind == "dtype":
        shadows["lin.bias"] = shadows["lin.bias"].to(torch.float16)
    elif kind == "missing":
        del shadows["lin.bias"]
    else:  # another config
        config = ema.Config(schedule=0.123, buffers=averager.config.buffers)
        state["config"] = config_text(config)
    return state


def bad_copy_to(averager: EMA) -> None:
    """``copy_to`` a model with another shape, which must refuse and leave it as it was."""
    other = Net(np.random.default_rng(1))
    other.low = nn.Linear(3, 5).to(torch.bfloat16)
    kept = {n: bits(t) for n, t in other.state_dict().items()}
    try:
        averager.copy_to(other)
    finally:
        assert {n: bits(t) for n, t in other.state_dict().items()} == kept


def bad_functional(
    state: ema.EMAState, params: dict, config: ema.Config, t: int, kind: str
) -> None:
    """A functional call that must be refused, leaving in-place shadows as they were."""
    if kind == "func_weight":
        ema.update(state._replace(weight=torch.ones(2)), params, config)
    shadows = {n: s.clone() for n, s in state.shadow.items()}
    kept = {n: bits(s) for n, s in shadows.items()}
    try:
        ema.ema_update(shadows, params, t, decay=1.5 if kind == "func_decay" else math.nan)
    finally:
        assert {n: bits(s) for n, s in shadows.items()} == kept


def as64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).numpy().copy()


def eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps) if dtype.is_floating_point else 0.0


def shadow_dtype(config: ema.Config, live: torch.dtype) -> torch.dtype:
    """The README's dtype rule for a floating tensor's shadow."""
    if config.dtype is None:
        return torch.float32 if live in (torch.float16, torch.bfloat16) else live
    return live if config.dtype == "same" else getattr(torch, config.dtype)


def _finite_max(*arrays: np.ndarray) -> float:
    vals = [np.abs(a[np.isfinite(a)]).max(initial=0.0) for a in arrays]
    return float(max(vals))


@dataclass
class Track:
    """The expected value of one shadow: ``ref`` (float64) within ``err`` (absolute; 0 is
    bit-exact, non-finite entries included)."""

    kind: str  # "avg" (blended), "copy" (a floating buffer copied), "int"
    ref: np.ndarray
    err: float = 0.0

    def blend(self, d: float, live: np.ndarray, blend_eps: float, copy_eps: float) -> None:
        if d == 1.0:
            return
        if d == 0.0:  # a copy: exact unless the shadow is narrower than the live tensor
            self.ref, self.err = live.copy(), copy_eps * _finite_max(live)
            return
        bound = _finite_max(self.ref, live)
        self.ref = d * self.ref + (1 - d) * live
        self.err = d * self.err + 4 * blend_eps * bound

    def rounded(self, to_eps: float) -> None:
        """The shadow may have been converted to a dtype of ``to_eps``."""
        self.err += to_eps * _finite_max(self.ref)

    def check(self, got: np.ndarray, what: str, scale: float = 1.0, extra: float = 0.0) -> None:
        """``got`` (float64) is ``ref / scale`` within the bound (``extra``: relative)."""
        want = self.ref / scale
        fin = np.isfinite(want)
        assert np.array_equal(fin, np.isfinite(got)), (what, got, want)
        tol = self.err / scale + extra * _finite_max(want)
        if tol == 0.0:
            assert np.array_equal(got, want, equal_nan=True), (what, got, want)
        else:
            assert np.all(np.abs(got[fin] - want[fin]) <= tol), (what, got, want, tol)


class Reference:
    """Per tracked name, what the shadow must hold; and the weight and the step."""

    def __init__(self, config: ema.Config, spec: Spec, kinds: dict[str, str], live: dict) -> None:
        self.config, self.spec, self.step = config, spec, 0
        self.weight = 0.0 if config.init == "zeros" else 1.0
        zeros = config.init == "zeros"
        self.tracks = {
            n: Track(k, np.zeros_like(as64(live[n])) if zeros and k == "avg" else as64(live[n]))
            for n, k in kinds.items()
        }

    def decay(self, t: int) -> float:
        c = self.config
        return effective_decay(self.spec, t, c.init, c.interval, c.compensate)

    def update(self, t: int, live: dict, dtypes: dict[str, torch.dtype]) -> float:
        """Update ``t`` over the ``live`` tensors, into shadows of ``dtypes``; its decay."""
        d = self.decay(t)
        for name, track in self.tracks.items():
            if track.kind == "avg":
                sd, wide = dtypes[name], live[name].dtype.itemsize
                narrower = eps(sd) if sd.itemsize < wide else 0.0
                with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: a nan reference
                    track.blend(d, as64(live[name]), eps(sd), narrower)
            elif track.kind == "copy" or self.config.non_float == "copy":
                track.ref, track.err = as64(live[name]), 0.0
        if self.config.init == "zeros":
            self.weight = d * self.weight + (1 - d)
        self.step = t
        return d

    def check_ends(self, d: float, shadows: dict, before: dict | None, live: dict) -> None:
        """A decay of 1 keeps an averaged shadow's bits (``before``), a decay of 0 copies."""
        for name, track in self.tracks.items():
            if track.kind == "avg" and d == 1.0 and before is not None:
                assert bits(shadows[name]) == before[name], name
            elif track.kind == "avg" and d == 0.0:
                assert bits(shadows[name]) == bits(live[name].to(shadows[name].dtype)), name
