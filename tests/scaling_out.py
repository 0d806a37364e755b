"""The README's "Scaling out" examples: ```py blocks (not ```python, which test_readme runs
in-process), run by tests/test_dist_torch.py under torchrun and tests/test_dist_jax.py with 8
CPU devices."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks(containing: str, readme: Path = README) -> list[str]:
    """The ```py blocks of the "## Scaling out" section that contain ``containing``."""
    found = re.search(r"^## Scaling out.*?(?=^## |\Z)", readme.read_text(), flags=re.S | re.M)
    code = re.findall(r"```py\n(.*?)```", found.group(0), flags=re.S) if found else []
    return [b for b in code if containing in b]
