"""Run clean-up (deregistration) when the process gets SIGTERM, Kubernetes' shutdown signal.

    from codomyrmex.service_mesh.discovery import on_sigterm

    undo = on_sigterm(registry.close)     # deregister, then let SIGTERM do what it did

The hooks run once, newest first, on a helper thread that the handler waits for
(at most ``timeout`` seconds each round), so a hook that needs a lock the
interrupted main thread holds cannot hang the shutdown. Then the signal goes on
to the handler that was installed before: a Python handler is called, the
default one ends the process with SIGTERM's status as if nothing had been
installed, and an ignored signal stays ignored.

Python lets only the main thread install signal handlers; ``on_sigterm`` from
another thread raises RuntimeError.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol, TypeVar

__all__ = ["ClosedOnExit", "close_at_shutdown", "on_sigterm", "sigterm_hooks"]

logger = logging.getLogger("codomyrmex.service_mesh.discovery")

_lock = threading.Lock()
_hooks: list[Callable[[], object]] = []
_previous: Any = None
_installed = False
_timeout = 5.0


def sigterm_hooks() -> list[Callable[[], object]]:
    """The hooks that will run on SIGTERM, in the order they will run."""
    with _lock:
        return list(reversed(_hooks))


def on_sigterm(hook: Callable[[], object], *, timeout: float = 5.0) -> Callable[[], None]:
    """Run ``hook`` on SIGTERM (once), before the previous handler; returns an undo."""
    global _installed, _previous, _timeout
    if not callable(hook):
        raise TypeError(f"hook must be callable, got {hook!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number, got {timeout!r}")
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("on_sigterm must be called from the main thread (Python's rule)")
    with _lock:
        _timeout = float(timeout)
        _hooks.append(hook)
        if not _installed:
            _previous = signal.signal(signal.SIGTERM, _handle)
            _installed = True

    def undo() -> None:
        with _lock:
            if hook in _hooks:
                _hooks.remove(hook)

    return undo


class _Closable(Protocol):
    def close(self) -> object: ...


_C = TypeVar("_C", bound="ClosedOnExit")


class ClosedOnExit:
    """Mixin for what registers this process somewhere: ``with registry:`` closes it
    (deregisters) on the way out, as :func:`close_at_shutdown` does at exit."""

    __slots__ = ()

    def close(self) -> None:
        """Deregister and stop (idempotent)."""
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def close_at_shutdown(closable: _Closable, *, at_exit: bool, sigterm: bool) -> Callable[[], None]:
    """Call ``closable.close()`` at interpreter exit (``at_exit``) and on SIGTERM
    (``sigterm``, see :func:`on_sigterm`), holding only a weak reference to it, so an
    object dropped before then is not kept alive; returns one undo for both."""
    ref = weakref.ref(closable)

    def close_later() -> None:
        target = ref()
        if target is not None:
            target.close()

    undos: list[Callable[[], None]] = []
    if at_exit:
        atexit.register(close_later)
        undos.append(lambda: atexit.unregister(close_later))
    if sigterm:
        undos.append(on_sigterm(close_later))

    def undo() -> None:
        for each in undos:
            each()

    return undo


def _run_hooks() -> None:
    while True:
        with _lock:
            if not _hooks:
                return
            hook = _hooks.pop()
        try:
            hook()
        except Exception:
            logger.exception("a SIGTERM hook raised")


def _handle(signum: int, frame: FrameType | None) -> None:
    worker = threading.Thread(target=_run_hooks, name="sigterm hooks", daemon=True)
    worker.start()
    worker.join(_timeout)
    previous = _previous
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    else:  # SIG_DFL (or unknown): end the process as the default handler would
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
