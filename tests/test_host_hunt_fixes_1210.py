"""Fixes of the host-engine hunt of 2026-12-05: a numba that is installed but does not import."""

from __future__ import annotations

import textwrap

import pytest

from tests.two_cpu_devices import run_script

SCRIPT = textwrap.dedent(
    """
    import warnings
    import numpy as np
    import ema_core as ema

    shadow = {"a": np.zeros((40, 60))[:, ::2], "b": np.zeros(5000, np.float32)}
    params = {"a": np.ones((40, 30)), "b": np.ones(5000, np.float32)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ema.ema_update(shadow, params, 1, decay=0.5)
        ema.ema_update(shadow, params, 2, decay=0.5)
    assert (shadow["a"] == 0.75).all() and (shadow["b"] == 0.75).all(), shadow
    messages = [str(w.message) for w in caught if w.category is RuntimeWarning]
    assert len(messages) == 1, messages  # once, not at every update
    assert "numba is installed but does not import" in messages[0], messages
    assert "Numba needs NumPy" in messages[0] and "EMA_CORE_NUMBA=0" in messages[0], messages
    print("BROKEN-NUMBA-OK")
    """
)


def test_a_numba_that_fails_to_import_warns_once_and_every_leaf_is_updated(tmp_path) -> None:
    # a numba built for another numpy raises at import; before 2026-12-05 every numpy update
    # raised that ImportError from its write loop, after the leaves before it were written
    fake = tmp_path / "numba"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("Numba needs NumPy 2.2 or less")\n')
    run_script(SCRIPT, "BROKEN-NUMBA-OK", {"PYTHONPATH": str(tmp_path), "EMA_CORE_NUMBA": None})


def test_an_ml_dtypes_integer_leaf_is_told_to_widen_to_an_integer() -> None:
    # the message named bfloat16 and advised float32 for every ml_dtypes dtype, int4 included
    ml_dtypes = pytest.importorskip("ml_dtypes")
    import numpy as np

    import ema_core as ema

    for dtype, wide in ((ml_dtypes.int4, "int8"), (ml_dtypes.float8_e4m3fn, "float32")):
        shadow = np.zeros(3, dtype)
        with pytest.raises(TypeError) as caught:
            ema.ema_update(shadow, np.ones(3, dtype), 1, decay=0.5)
        message = str(caught.value)
        assert f"a JAX array of {np.dtype(dtype)}" in message, message
        assert f".astype(numpy.{wide})" in message, message
        assert "bfloat16" not in message, message
