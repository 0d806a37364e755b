"""ema-core's environment variables (``ema_core/_settings.py``): read once, checked, refreshed on
demand; no other module reads the environment; the ``host_kernels`` fixture routes both ways."""

from __future__ import annotations

import re
from pathlib import Path

import array_api_compat.numpy as np_xp
import numpy as np
import pytest

from ema_core import _settings
from ema_core._settings import Settings, read, settings
from ema_core.backends import host
from ema_core.backends import numpy as numpy_backend
from ema_core.backends.host import _numba

PACKAGE = Path(__file__).resolve().parents[1] / "ema_core"


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Each time the settings are read from the environment (kept ones forgotten first)."""
    seen: list[Settings] = []
    monkeypatch.setattr(_settings, "_kept", [])
    monkeypatch.setattr(_settings, "read", lambda env: seen.append(read(env)) or seen[-1])
    return seen


def _update(n: int = 8) -> np.ndarray:
    s, p = np.zeros(n, np.float32), np.ones(n, np.float32)
    numpy_backend.update_leaves(np_xp, [s], [p], ["float"], 0.5, 0.5, non_float="copy",
                                writes=[True])  # fmt: skip
    return s


def test_defaults_when_nothing_is_set() -> None:
    assert read({}) == Settings(numba=True, numpy_threads=None)
    assert read({"OTHER": "x"}) == Settings()


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({"EMA_CORE_NUMBA": "0"}, Settings(numba=False)),
        ({"EMA_CORE_NUMBA": " 1\n"}, Settings(numba=True)),
        ({"EMA_CORE_NUMPY_THREADS": "3"}, Settings(numpy_threads=3)),
        ({"EMA_CORE_NUMPY_THREADS": " 12 "}, Settings(numpy_threads=12)),
    ],
)
def test_values_allowed(env: dict[str, str], want: Settings) -> None:
    assert read(env) == want


@pytest.mark.parametrize("value", ["maybe", "", "2", "true", "off", "-1"])
def test_a_bad_switch_is_refused_naming_variable_value_and_choices(value: str) -> None:
    want = f"EMA_CORE_NUMBA must be '1' (the default: use numba) or '0', got {value!r}"
    with pytest.raises(ValueError, match=re.escape(want)):
        read({"EMA_CORE_NUMBA": value})


@pytest.mark.parametrize("value", ["0", "-2", "two", "", "1.5", "²", "+3"])
def test_a_bad_thread_count_is_refused_naming_variable_value_and_choices(value: str) -> None:
    want = f"EMA_CORE_NUMPY_THREADS must be an integer >= 1, got {value!r}"
    with pytest.raises(ValueError, match=re.escape(want)):
        read({"EMA_CORE_NUMPY_THREADS": value})


def test_read_once_until_refreshed(monkeypatch: pytest.MonkeyPatch, reads: list[Settings]) -> None:
    monkeypatch.setenv("EMA_CORE_NUMBA", "1")
    monkeypatch.setenv("EMA_CORE_NUMPY_THREADS", "2")
    for _ in range(3):
        _update()
        assert _numba.usable() == _numba._installed()
    assert reads == [Settings(numba=True, numpy_threads=2)]
    monkeypatch.setenv("EMA_CORE_NUMBA", "0")
    monkeypatch.setenv("EMA_CORE_NUMPY_THREADS", "not read")
    assert (_update() == 0.5).all() and settings().numba and len(reads) == 1  # not seen yet
    with pytest.raises(ValueError, match="EMA_CORE_NUMPY_THREADS must be"):
        settings(refresh=True)
    assert settings().numba and len(reads) == 1  # a refused refresh keeps the old settings
    monkeypatch.setenv("EMA_CORE_NUMPY_THREADS", "1")
    assert settings(refresh=True) == Settings(numba=False, numpy_threads=1)
    assert not _numba.usable() and settings() is settings() and len(reads) == 2


def test_torch_host_engine_reads_the_kept_settings(
    monkeypatch: pytest.MonkeyPatch, reads: list[Settings]
) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("numba")
    from ema_core.backends.torch import _host

    shadow, params = torch.zeros(8), torch.ones(8, dtype=torch.bfloat16)
    calls: list[int] = []
    original = _numba.apply
    monkeypatch.setattr(_numba, "apply", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setenv("EMA_CORE_NUMBA", "1")
    bound = _host.lerp_([shadow], [params], 0.5, 0.5)
    monkeypatch.setenv("EMA_CORE_NUMBA", "0")
    _host.lerp_([shadow], [params], 0.5, 0.5, bound)
    assert calls == [1, 1] and len(reads) == 1  # the compiled loop both times: not re-read
    settings(refresh=True)
    _host.lerp_([shadow], [params], 0.5, 0.5, bound)
    assert calls == [1, 1] and len(reads) == 2 and (shadow == 0.875).all()


def test_a_bad_value_is_refused_at_first_use_before_any_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_settings, "_kept", [])
    monkeypatch.setenv("EMA_CORE_NUMBA", "maybe")
    s = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="EMA_CORE_NUMBA must be"):
        numpy_backend.update_leaves(np_xp, [s], [np.ones(8, np.float32)], ["float"], 0.5, 0.5,
                                    non_float="copy", writes=[True])  # fmt: skip
    assert not s.any() and _settings._kept == []


def test_a_flipped_variable_comes_back_after_the_test() -> None:
    before = settings()
    with pytest.MonkeyPatch.context() as patch:  # the recipe the tests use
        patch.setenv("EMA_CORE_NUMBA", "0" if before.numba else "1")
        patch.setattr(_settings, "_kept", [])
        assert settings().numba != before.numba
    assert settings() is before


def test_host_kernels_fixture_routes_both_ways(host_kernels: str) -> None:
    assert _numba.usable() == (host_kernels == "numba")
    s = np.zeros(host.BLOCK * 2, np.float32)
    assert (_numba.prepare(s, np.ones(s.size, np.float16)) is not None) == (host_kernels == "numba")


def test_only_the_settings_module_reads_the_environment() -> None:
    readers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "_settings.py" and re.search(r"\benviron\b|\bgetenv\b", path.read_text())
    )
    assert readers == []
