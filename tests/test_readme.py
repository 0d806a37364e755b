"""The README's python snippets run as written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
# every python block but the one-line headline, which shows the call's signature
BLOCKS = [
    b
    for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    if not b.startswith("shadow = ema_core.ema_update")
]
FRAMEWORKS = ("torch", "jax", "cupy", "lightning", "accelerate", "flax", "keras", "optax")


def test_readme_has_quickstarts() -> None:
    assert len(BLOCKS) >= 3


# Keras 3.15's Variable.numpy() under numpy 2.4 (Keras' own code, met by ModelCheckpoint's save)
@pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_snippet_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    code = BLOCKS[index]
    for name in FRAMEWORKS:
        imported = re.search(rf"^\s*import {name}\b|^from {name}\b", code, flags=re.M)
        if imported and importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed")
    exec(compile(code, f"README.md[python block {index}]", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out.strip()  # every snippet prints its result
