"""Host-side progress of compiled sampling loops.

Compiled loops call `report_step(i, n)` through `jax.debug.callback`; whoever wants to know (a tqdm
bar, a logger) registers with `on_step`. Keeping the callback a fixed module function means the
loop is compiled once, whatever is listening.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

_listeners: list[Callable[[int, int], None]] = []


def report_step(step, num_steps) -> None:
    for listener in tuple(_listeners):
        listener(int(step), int(num_steps))


@contextlib.contextmanager
def on_step(listener: Callable[[int, int], None]) -> Iterator[None]:
    """Calls `listener(step, num_steps)` after every reported step while the context is open.

    Block on the sampler's result before leaving the context: callbacks run asynchronously.
    """
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
