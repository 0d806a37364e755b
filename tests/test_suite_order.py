"""The suite's own scheduling (conftest.py ``HEAVY``, the Makefile's ``--no-loadscope-reorder``):
the costliest files are collected first, so ``make test``'s two workers start with them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import conftest

ROOT = Path(__file__).resolve().parents[1]


def test_every_heavy_file_exists_once() -> None:
    """A renamed or deleted file would silently drop out of the ordering."""
    assert len(set(conftest.HEAVY)) == len(conftest.HEAVY)
    missing = [name for name in conftest.HEAVY if not (ROOT / name).is_file()]
    assert not missing, missing


def test_the_makefile_keeps_the_collection_order() -> None:
    """xdist's default reorder (most tests per file first) would undo ``HEAVY``."""
    makefile = (ROOT / "Makefile").read_text()
    assert "--dist loadfile --no-loadscope-reorder" in makefile


def test_collection_starts_with_the_heavy_files_in_their_order() -> None:
    """The hook moves the ``HEAVY`` files' items first, in ``HEAVY``'s order, each file whole
    and in its own order; every other item keeps its place."""
    first, second = conftest.HEAVY[0], conftest.HEAVY[1]
    ids = [
        "tests/test_schedules.py::a",
        f"{second}::x",
        "ema_core/_api.py::ema_core._api.ema_update",
        f"{first}::y",
        f"{second}::z",
        "tests/test_schedules.py::b",
        f"{first}::w",
    ]
    items: list[Any] = [SimpleNamespace(nodeid=i) for i in ids]
    conftest.pytest_collection_modifyitems(items)
    assert [item.nodeid for item in items] == [
        f"{first}::y",
        f"{first}::w",
        f"{second}::x",
        f"{second}::z",
        "tests/test_schedules.py::a",
        "ema_core/_api.py::ema_core._api.ema_update",
        "tests/test_schedules.py::b",
    ]
