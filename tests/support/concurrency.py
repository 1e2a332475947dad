"""Running one function on several threads at once, for tests of shared state."""

from __future__ import annotations

import threading
from collections.abc import Callable


def errors_in_threads(fn: Callable[[], None], threads: int) -> list[BaseException]:
    """Run ``fn`` on ``threads`` threads together; what any of them raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            errors.append(exc)

    started = [threading.Thread(target=run) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    return errors
