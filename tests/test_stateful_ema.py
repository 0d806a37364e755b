"""A stateful property test of the torch ``EMA`` and the functional API: random sequences of
user actions (train steps, updates, swaps, resumes, dtype round trips, replaced parameters,
refused calls) against a float64 model of the README's update rule (tests/stateful_models)."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from torch import nn

import ema_core as ema
from ema_core.torch import EMA
from tests import stateful_models as sm
from tests.reference import Spec
from tests.stateful_models import Net, Reference, as64, bad_state, bits, eps, snapshot

SPECS = [Spec("constant", (d,)) for d in (0.0, 0.5, 0.9, 1.0)]
SPECS.append(Spec("warmup", (0.999,), {"power": 0.75}))
THEN = ["none", "update", "swap", "swap_eval", "copy_to", "resume"]
BAD = ["back", "negative", "float_step", "swap_copy", "weight", "state_step", "shape", "dtype"]
BAD += ["missing", "config", "copy_to_shape", "func_decay", "func_nan", "func_weight"]


class Boom(Exception):
    pass


class EMAMachine(RuleBasedStateMachine):
    @initialize(
        seed=st.integers(0, 2**32 - 1),
        spec=st.sampled_from(SPECS),
        init=st.sampled_from(["params", "copy", "zeros"]),
        interval=st.integers(1, 3),
        compensate=st.booleans(),
        dtype=st.sampled_from([None, "same", "float64"]),
        buffers=st.sampled_from(["average", "copy", "skip"]),
        non_float=st.sampled_from(["copy", "freeze"]),
    )
    def build(self, seed: int, spec: Spec, buffers: str, **kw: Any) -> None:
        self.rng = np.random.default_rng(seed)
        self.model = Net(self.rng)
        self.config = ema.Config(schedule=spec.build(), buffers=buffers, **kw)  # type: ignore[arg-type]
        self.ema = EMA(self.model, config=self.config)
        self.twin: EMA | None = None
        self.wide = False  # model.to(torch.float64) in force
        self.lazy = False  # no read of the EMA before the action: it follows a change itself
        live = self.live()
        kinds = {n: "avg" for n, _ in self.model.named_parameters()}
        if buffers != "skip":
            for n, _ in self.model.named_buffers():
                kinds[n] = "int" if n in sm.INTS else ("avg" if buffers == "average" else "copy")
        self.ref = Reference(self.config, spec, kinds, live)
        fkinds = {n: "avg" for n, _ in self.model.named_parameters()} | {"count": "int"}
        self.func = ema.init({n: live[n].detach() for n in fkinds}, self.config)
        self.fref = Reference(self.config, spec, fkinds, live)
        self.inplace = {n: s.clone() for n, s in self.func.shadow.items()}  # ema_update's

    def live(self) -> dict[str, torch.Tensor]:
        return dict(self.model.named_parameters()) | dict(self.model.named_buffers())

    def snap(self) -> dict[str, Any] | None:
        return None if self.lazy else snapshot(self.ema)

    def _then(self, then: str) -> None:
        """The action right after a change to the model, before any other read of the EMA."""
        self.lazy = True
        try:
            if then == "update":
                self._update(explicit=False, ahead=0)
            elif then == "swap":
                self.swap_and_write("bn", fail=False)
            elif then != "none":
                getattr(self, then)()
        finally:
            self.lazy = False

    def live_bits(self) -> dict[str, Any]:
        """The tracked live tensors' bits and data pointers (a write to another one stays)."""
        live = self.live()
        return {n: (bits(live[n]), live[n].data_ptr()) for n in self.ref.tracks}

    # --- rules: what a user does ---

    @rule(
        scale=st.sampled_from([1.0, 1e-3, 100.0]),
        special=st.sampled_from(["none"] * 6 + ["inf", "-inf", "nan", "fix"]),
    )
    def train(self, scale: float, special: str) -> None:
        self.model.train_step(self.rng, scale, special)

    @rule(explicit=st.sampled_from([False, True, "tensor"]), ahead=st.integers(0, 3))
    def update(self, explicit: bool | str, ahead: int) -> None:
        self._update(explicit, ahead)

    def _update(self, explicit: bool | str, ahead: int) -> None:
        """``update()``, ``update(t)`` or ``update(torch.tensor(t))`` (a CPU step: as an int)."""
        t = max(self.ref.step + ahead, 1) if explicit else self.ref.step + 1
        step = torch.tensor(t) if explicit == "tensor" else t
        before = self.snap()
        fbefore = {n: bits(s) for n, s in self.func.shadow.items()}
        for averager in (self.ema, self.twin):
            if averager is not None:
                averager.update(step) if explicit else averager.update()
        live = self.live()
        fstate = self.func._replace(step=torch.tensor(t - 1, dtype=self.func.step.dtype))
        fparams = {n: live[n].detach() for n in self.func.shadow}
        self.func = ema.update(fstate, fparams, self.config)
        params = {n: live[n] for n in self.func.shadow}  # the same objects: a cached plan
        ema.ema_update(self.inplace, params, step, config=self.config, copy=False)
        dtypes = {n: sm.shadow_dtype(self.config, live[n].dtype) for n in self.ref.tracks}
        d = self.ref.update(t, live, dtypes)
        self.fref.update(t, live, {n: s.dtype for n, s in self.func.shadow.items()})
        self.ref.check_ends(d, self.ema.state_dict()["shadow"], before, live)
        self.fref.check_ends(d, self.func.shadow, fbefore, live)

    @rule(write=st.sampled_from(["sgd", "inplace", "bn"]), fail=st.booleans())
    def swap_and_write(self, write: str, fail: bool) -> None:
        before, live_before = self.snap(), self.live_bits()
        try:
            with self.ema.swap():
                self._check_inside()
                with pytest.raises(RuntimeError, match="inside swap"):
                    self.ema.update()
                self.model.write(write)
                if fail:
                    raise Boom
        except Boom:
            assert fail
        assert self.live_bits() == live_before
        assert before is None or snapshot(self.ema) == before

    @rule()
    def swap_eval(self) -> None:
        before, live_before = self.snap(), self.live_bits()
        with self.ema.swap(copy=False):
            self._check_inside()
            self.model.evaluate()
        assert self.live_bits() == live_before
        assert before is None or snapshot(self.ema) == before

    def _check_inside(self) -> None:
        """Inside ``swap()`` the model holds the averages, cast to its dtypes."""
        live, w = self.live(), self.ref.weight
        zeros = self.config.init == "zeros"
        for name, track in self.ref.tracks.items():
            scale = w if zeros and track.kind == "avg" and w != 0.0 else 1.0
            extra = eps(live[name].dtype) + (eps(torch.float32) if scale != 1.0 else 0.0)
            track.check(as64(live[name]), f"inside swap: {name}", scale, extra)

    @rule()
    def resume(self) -> None:
        buffer = io.BytesIO()
        torch.save(self.ema.state_dict(), buffer)
        buffer.seek(0)
        self.twin = EMA(self.model, config=self.config)
        self.twin.load_state_dict(torch.load(buffer, weights_only=True))

    @rule()
    def copy_to(self) -> None:
        before = self.snap()
        other = Net(np.random.default_rng(0))
        # integers held at their value from construction are not averages: never written
        frozen = self.config.non_float == "freeze"
        written = {
            n for n in self.ref.tracks if not frozen or other.state_dict()[n].is_floating_point()
        }
        kept = {n: bits(t) for n, t in other.state_dict().items() if n not in written}
        self.ema.copy_to(other)
        averages, targets = self.ema.average, other.state_dict()
        for name in written:
            assert bits(targets[name]) == bits(averages[name].to(targets[name].dtype)), name
        assert {n: bits(t) for n, t in targets.items() if n not in written} == kept
        assert before is None or snapshot(self.ema) == before

    @precondition(lambda self: not self.wide)
    @rule(then=st.sampled_from(THEN))
    def widen(self, then: str) -> None:
        self.model.to(torch.float64)
        self.wide = True
        self._then(then)

    @precondition(lambda self: self.wide)
    @rule(then=st.sampled_from(THEN))
    def narrow(self, then: str) -> None:
        self.model.to_original()
        self.wide = False
        for module_name, dtype in sm.ORIGINAL.items():
            self._rounded(module_name, dtype)
        self._then(then)

    def _rounded(self, module_name: str, dtype: torch.dtype) -> None:
        """The shadows of a module converted to ``dtype`` may be rounded (a copied buffer's
        shadow has the buffer's dtype; integers stay)."""
        for name, track in self.ref.tracks.items():
            if name.startswith(module_name + ".") and track.kind != "int":
                to = dtype if track.kind == "copy" else sm.shadow_dtype(self.config, dtype)
                track.rounded(eps(to))

    @rule(
        which=st.sampled_from(["lin.weight", "low.bias", "bn.weight"]),
        dtype=st.sampled_from([None, torch.float64, torch.bfloat16]),
        then=st.sampled_from(THEN),
    )
    def replace_parameter(self, which: str, dtype: torch.dtype | None, then: str) -> None:
        module_name, attr = which.split(".")
        module = getattr(self.model, module_name)
        if dtype is not None:  # the module's other tensors too (or its forward fails)
            module.to(dtype)
            self._rounded(module_name, dtype)
        old = getattr(module, attr)
        new = torch.from_numpy(self.rng.uniform(-2, 2, old.shape)).to(old.dtype)
        setattr(module, attr, nn.Parameter(new))
        self._then(then)

    @rule(kind=st.sampled_from(BAD))
    def refused(self, kind: str) -> None:
        before, live_before = snapshot(self.ema), self.live_bits()
        fbefore = {n: bits(s) for n, s in self.func.shadow.items()}
        error = TypeError if kind in ("float_step", "swap_copy") else ValueError
        with pytest.raises(error):
            self._bad_call(kind)
        assert before is None or snapshot(self.ema) == before
        assert self.live_bits() == live_before
        assert {n: bits(s) for n, s in self.func.shadow.items()} == fbefore

    def _bad_call(self, kind: str) -> None:
        step = self.ref.step
        if kind in ("back", "negative", "float_step"):
            bad: Any = {"back": step - 1 if step >= 1 else -1, "negative": -1, "float_step": 1.5}
            self.ema.update(bad[kind])
        elif kind == "swap_copy":
            with self.ema.swap(copy=1):  # type: ignore[arg-type]
                pass
        elif kind == "copy_to_shape":
            sm.bad_copy_to(self.ema)
        elif kind.startswith("func_"):
            params = {n: t.detach() for n, t in self.live().items() if n in self.func.shadow}
            sm.bad_functional(self.func, params, self.config, max(step, 1), kind)
        else:
            self.ema.load_state_dict(bad_state(self.ema, kind))

    # --- invariants ---

    @invariant()
    def averages_follow_the_rule(self) -> None:
        sd = self.ema.state_dict()
        assert int(sd["step"]) == int(self.ema.step) == self.ref.step
        assert math.isclose(float(sd["weight"]), self.ref.weight, rel_tol=1e-12)
        for name, track in self.ref.tracks.items():
            track.check(as64(sd["shadow"][name]), name)
        w, averages = self.ref.weight, self.ema.average
        for name, track in self.ref.tracks.items():
            zeros = self.config.init == "zeros" and track.kind == "avg"
            if zeros and w not in (0.0, 1.0):
                track.check(as64(averages[name]), f"average {name}", w, eps(torch.float32))
            elif zeros:  # read in float32 over a half shadow, undivided
                got, want = as64(averages[name]), as64(sd["shadow"][name])
                assert np.array_equal(got, want, equal_nan=True), name
            else:
                assert bits(averages[name]) == bits(sd["shadow"][name]), name

    @invariant()
    def functional_follows_the_rule(self) -> None:
        assert int(self.func.step) == self.fref.step
        assert math.isclose(float(self.func.weight), self.fref.weight, rel_tol=1e-12)
        for name, track in self.fref.tracks.items():
            track.check(as64(self.func.shadow[name]), f"functional {name}")
            assert bits(self.inplace[name]) == bits(self.func.shadow[name]), name

    @invariant()
    def resumed_twin_is_bit_identical(self) -> None:
        if self.twin is not None:
            assert snapshot(self.twin) == snapshot(self.ema)


EMAMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=15, deadline=None, database=None, derandomize=True
)
TestEMAMachine = EMAMachine.TestCase
