"""``HeldInterrupts``: Ctrl-C (SIGINT) held while an update, a swap or a load writes, and
delivered once the writes are over, so none is left half done."""

from __future__ import annotations

import importlib
import signal
import threading
from types import TracebackType
from typing import Any

try:  # the C module under ``signal``: its calls skip the enum conversions (10x faster)
    _SIGNALS: Any = importlib.import_module("_signal")
except ImportError:  # pragma: no cover - CPython always has it
    _SIGNALS = signal


class HeldInterrupts:
    """``with HeldInterrupts():`` holds Ctrl-C (SIGINT) until the block ends, then delivers it.

    Python raises ``KeyboardInterrupt`` at the next bytecode after the signal: often right
    after a fused call returned, before its unit is recorded as done, or between the tensors of
    a group that loops in Python. Held, the signal reaches the installed handler once the
    writes are over (a ``KeyboardInterrupt`` then, with the update complete). Only the main
    thread gets signals in Python; elsewhere, and where no Python handler is installed, nothing
    changes. Costs three handler calls per block (about a microsecond).
    """

    def __init__(self) -> None:
        self.previous: Any = None
        self.caught: list[tuple[int, Any]] = []

    def _catch(self, signum: int, frame: Any) -> None:
        self.caught.append((signum, frame))

    def __enter__(self) -> HeldInterrupts:
        if threading.current_thread() is threading.main_thread():
            handler = _SIGNALS.getsignal(signal.SIGINT)
            if callable(handler):
                _SIGNALS.signal(signal.SIGINT, self._catch)
                self.previous = handler
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        previous, self.previous = self.previous, None
        if previous is not None:
            _SIGNALS.signal(signal.SIGINT, previous)
            if self.caught:
                previous(*self.caught.pop(0))  # Python's default handler raises here
