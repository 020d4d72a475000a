"""How a sweep stops as a whole (not one cell): its exit statuses and the exceptions that carry
them through Hydra's job runner and the launchers."""

from __future__ import annotations

import signal
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFORMANCE, EXIT_TIME_LIMIT = 0, 1, 2, 3, 4
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
PROGRESS_EVERY = 10.0  # seconds between progress lines of a long cell when output is not a terminal


class SweepStopped(BaseException):
    """Stops the whole sweep (not one cell). A BaseException, like KeyboardInterrupt, so that it
    passes through Hydra's job runner and the launcher's loop instead of failing one cell."""

    exit_status = EXIT_FAILED


class Interrupted(SweepStopped):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_status = EXIT_SIGNAL.get(signum, 128 + signum)


class TimeLimitExceeded(SweepStopped):
    exit_status = EXIT_TIME_LIMIT


def raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


def is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def unwrap_stop(error: BaseException) -> SweepStopped | None:
    """A SweepStopped (or KeyboardInterrupt) raised in a parallel worker, however it was wrapped."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, SweepStopped):
            return seen
        if isinstance(seen, KeyboardInterrupt):
            return Interrupted(signal.SIGINT)
        seen = seen.__cause__ or seen.__context__
    return None
