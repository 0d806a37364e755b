"""Helpers for the parity tests against the real peer libraries.

Peers are imported lazily and their tests skip with a reason when one is missing. timm does not
import here (torchvision is missing), so its ``timm/utils/model_ema.py``, which needs only torch,
is loaded by file path. The torch trajectory is seeded: every step perturbs the parameters as an
optimizer would and runs a training-mode forward pass, so BatchNorm buffers move as well.

Keras runs in a worker process per backend (it reads ``KERAS_BACKEND`` once, at import). A
``Judge`` compares ema-core, the peer and the peer's float64 oracle (``tests/peer_oracles.py``)
after each step and says, on a failure, who is off.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

EPS32 = float(np.finfo(np.float32).eps)
#: The decay bands the bounds are measured and stated over (a decay below 0.5 or equal to 1
#: falls in the nearest band).
BANDS: tuple[tuple[float, float], ...] = ((0.5, 0.99), (0.99, 0.999), (0.999, 0.99999))


def require(module: str) -> Any:
    """Import a peer or skip the test, saying which one is missing. Warnings raised while a
    peer imports itself (mmengine scripts a function with the deprecated ``torch.jit.script``)
    are the peer's, not ours, and are silenced."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module(module)
    except ImportError as err:
        pytest.skip(f"peer {module} is not installed: {err}")


def require_installed(module: str) -> None:
    """Skip unless a peer is installed, without importing it (Keras picks its backend at import)."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"peer {module} is not installed")


def load_timm_model_ema() -> Any:
    """timm's ``model_ema`` module, loaded by file path (``import timm`` needs torchvision)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        pytest.skip("timm is not installed (pip install --no-deps timm)")
    path = Path(spec.origin).parent / "utils" / "model_ema.py"
    if not path.exists():
        pytest.skip(f"timm has no {path}")
    file_spec = importlib.util.spec_from_file_location("_timm_model_ema", path)
    if file_spec is None or file_spec.loader is None:
        pytest.skip(f"cannot load {path}")
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def make_model(seed: int = 0, batchnorm: bool = True) -> Any:
    """A small torch model (two linear layers, optionally a BatchNorm between them)."""
    torch = require("torch")
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(5, 8)]
    if batchnorm:
        layers.append(torch.nn.BatchNorm1d(8))
    layers += [torch.nn.ReLU(), torch.nn.Linear(8, 3)]
    return torch.nn.Sequential(*layers)


def train_steps(model: Any, steps: int, seed: int = 1) -> Iterator[int]:
    """Perturb the parameters (scale 0.1, a drifting random walk) and run a training-mode
    forward pass, ``steps`` times; yields the step t = 1, 2, ... after each."""
    torch = require("torch")
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for t in range(1, steps + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen) + 0.01)
            model(torch.randn(16, 5, generator=gen))
        yield t


def kinds(model: Any) -> dict[str, str]:
    """Name -> ``"param"``, ``"buffer"`` (floating) or ``"int"`` for a module's tensors."""
    out = {name: "param" for name, _ in model.named_parameters()}
    for name, b in model.named_buffers():
        out[name] = "buffer" if b.dtype.is_floating_point else "int"
    return out


def snapshot(model: Any) -> dict[str, np.ndarray]:
    """A module's parameters and buffers as float64 numpy arrays."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {name: as_float64(t) for name, t in tensors.items()}


def as_float64(x: Any) -> np.ndarray:
    """A torch tensor, JAX or numpy array as float64 numpy (bfloat16 widened)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = x.double() if x.dtype.is_floating_point else x
        return np.asarray(x.numpy(), np.float64)
    return np.asarray(np.asarray(x).astype(np.float64))


def ulps(got: Any, want: Any) -> float:
    """The largest difference in float32 ulps at the magnitude of ``want`` (at least 1); NaN
    where both are NaN counts as agreement."""
    g = np.asarray(got, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(np.nan_to_num(w)), initial=0.0)))
    with np.errstate(invalid="ignore"):
        diff = np.where(np.isnan(g) & np.isnan(w), 0.0, np.abs(g - w))
    worst = float(np.max(diff, initial=0.0))
    return worst / (EPS32 * scale) if not np.isnan(worst) else float("inf")


def band_of(decay: float) -> int:
    """The index in ``BANDS`` of a decay."""
    return next((i for i, (_, hi) in enumerate(BANDS) if decay <= hi), len(BANDS) - 1)


@dataclass(frozen=True)
class Setting:
    """One run: the peer's own arguments (given to the peer, its preset and its oracle), the
    arguments only the peer takes (``foreach`` switches), whether timm's ``update`` and
    ema-core's ``EMA.update`` are given ``step=t`` (else each counts its calls), and the
    trajectory's seed and length."""

    args: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    peer_step: bool = True
    ours_step: bool = True
    seed: int = 0
    steps: int = 160


_KERAS_WORKER = textwrap.dedent(
    """
    import json, os, sys
    os.environ["KERAS_BACKEND"] = sys.argv[1]
    import numpy as np, keras
    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        rng = np.random.default_rng(job["seed"])
        shapes = [(4, 3), (7,)]
        variables = [keras.Variable(rng.standard_normal(s).astype("float32")) for s in shapes]
        opt = keras.optimizers.SGD(learning_rate=0.1, use_ema=True, **job["args"])
        opt.build(variables)
        as_np = keras.ops.convert_to_numpy
        out = {f"init{i}": as_np(v) for i, v in enumerate(variables)}
        for t in range(job["steps"]):
            grads = [keras.ops.convert_to_tensor(rng.standard_normal(s).astype("float32"))
                     for s in shapes]
            opt.apply(grads, variables)
            for i, (v, e) in enumerate(zip(variables, opt._model_variables_moving_average)):
                out[f"var{i}_{t}"], out[f"ema{i}_{t}"] = as_np(v), as_np(e)
        np.savez(job["out"], **out)
        print("done", flush=True)
    """
)


class KerasWorker:
    """A Keras process on one backend (Keras reads ``KERAS_BACKEND`` once, at import), kept
    across a module's runs: each job trains two variables with ``SGD(use_ema=True, **args)``
    and returns them and their averages after every step."""

    def __init__(self, backend: str, tmp: Path) -> None:
        self.tmp, self.jobs, self.ready = tmp, 0, False
        self.log = tmp / f"keras-{backend}.log"
        env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
        with self.log.open("w") as log:
            cmd = [sys.executable, "-c", _KERAS_WORKER, backend]
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env
            )

    def _expect(self, word: str) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line == word, f"the Keras worker stopped: {self.log.read_text()[-2000:]}"

    def run(self, args: dict[str, Any], seed: int, steps: int) -> dict[str, np.ndarray]:
        if not self.ready:
            self._expect("ready")
            self.ready = True
        self.jobs += 1
        out = self.tmp / f"{self.log.stem}-{self.jobs}.npz"
        job = {"args": args, "seed": seed, "steps": steps, "out": str(out)}
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        self._expect("done")
        with np.load(out) as data:
            return dict(data)

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.proc.stdout.close()


@dataclass(frozen=True)
class Bound:
    """float32 ulps (at the values' magnitude) allowed after any step of 150-180: ema-core vs
    the peer, and ema-core vs the float64 oracle."""

    ours_peer: float
    ours_oracle: float


MEASURE = Bound(math.inf, math.inf)  # record, never fail (scripts/parity_bounds.py)


@dataclass
class Judge:
    """Compares ema-core, the peer and the oracle after a step; keeps the worst distance per
    pair and fails (or, when measuring, records) with all three and a verdict."""

    bound: Bound
    what: str
    kinds: Mapping[str, str]
    deviating: frozenset[str] = frozenset()
    worst: dict[str, float] = field(
        default_factory=lambda: {"ours-peer": 0.0, "ours-oracle": 0.0, "peer-oracle": 0.0}
    )
    misses: list[str] = field(default_factory=list)

    def check(
        self,
        t: int,
        path: str,
        ours: Mapping[str, Any],
        peer: Mapping[str, Any],
        oracle_peer: Mapping[str, np.ndarray],
        oracle_ours: Mapping[str, np.ndarray],
    ) -> None:
        for name in oracle_peer:
            assert name in peer, f"{self.what}: the peer holds no {name}"
            assert name in ours, f"{self.what}: {path} holds no {name}"
            a, b = as_float64(ours[name]), as_float64(peer[name])
            op, oo = oracle_peer[name], oracle_ours[name]
            if self.kinds[name] == "int":
                self._exact(f"{path}, step {t}", name, (a, b, op, oo))
                continue
            dist = {
                "ours-peer": 0.0 if name in self.deviating else ulps(a, b),
                "ours-oracle": ulps(a, oo),
                "peer-oracle": ulps(b, op),
            }
            for pair, value in dist.items():
                self.worst[pair] = max(self.worst[pair], value)
            if (
                dist["ours-peer"] > self.bound.ours_peer
                or dist["ours-oracle"] > self.bound.ours_oracle
            ):
                self._fail(self._report(t, path, name, (a, b, oo), dist))

    def _exact(self, where: str, name: str, values: tuple[np.ndarray, ...]) -> None:
        a, b, op, oo = values
        same_as_peer = name in self.deviating or np.array_equal(a, b)
        if not (same_as_peer and np.array_equal(a, oo)):
            self._fail(
                f"{self.what}\n  {where}, {name} (integer): ema-core {a}, peer {b}; "
                f"float64 oracle: {oo} for ema-core, {op} for the peer"
            )

    def _report(
        self, t: int, path: str, name: str, values: tuple[np.ndarray, ...], dist: dict[str, float]
    ) -> str:
        a, b, oo = values
        off = a - b if dist["ours-peer"] > self.bound.ours_peer else a - oo  # the failed pair
        idx = np.unravel_index(int(np.argmax(np.abs(np.nan_to_num(off)))), a.shape)
        at = f"{name}[{','.join(map(str, idx))}]" if idx else name
        return (
            f"{self.what}\n  {path}, step {t}, {at}: ema-core {a[idx]:.10g}, peer {b[idx]:.10g}, "
            f"float64 oracle {oo[idx]:.10g}\n  ema-core vs peer {dist['ours-peer']:.2f} float32 "
            f"ulps (bound {self.bound.ours_peer}), ema-core vs oracle {dist['ours-oracle']:.2f} "
            f"(bound {self.bound.ours_oracle}), peer vs oracle {dist['peer-oracle']:.2f}: "
            f"{verdict(dist['ours-oracle'], dist['peer-oracle'], self.bound.ours_oracle)}"
        )

    def _fail(self, message: str) -> None:
        if self.bound is not MEASURE:
            raise AssertionError(message)
        self.misses.append(message)


def verdict(ours_oracle: float, peer_oracle: float, near: float) -> str:
    """Who is off, given both distances from the float64 oracle."""
    ours_off, peer_off = ours_oracle > near, peer_oracle > near
    if ours_off and not peer_off:
        return "ema-core is off (the peer follows the float64 formula)"
    if peer_off and not ours_off:
        return "the peer is off the float64 formula (ema-core follows it)"
    if ours_off:
        return "both are off the float64 formula (shared float32 effect, or the oracle is wrong)"
    return "both are near the float64 formula: float32 rounding apart"
