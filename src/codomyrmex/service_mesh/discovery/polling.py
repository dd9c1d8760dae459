"""A source that lists its instances now and then (DNS): the resolver's polling loop.

Subclasses implement :meth:`PollingSource.resolve` (one listing, with the time it
stays valid, such as a DNS record's TTL) and :attr:`description`. The loop runs on
a daemon thread of its own, re-resolves when the TTL runs out (held within
``[min_interval, max_interval]``) and, while the source fails, retries every
``retry_interval``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass

from .._validate import check_number, check_optional_number
from ..load_balancer import ServiceInstance
from .resolver import Resolver

__all__ = ["PollingSource", "Resolution"]


@dataclass(frozen=True, slots=True)
class Resolution:
    """One listing: the instances and how many seconds it stays valid (None: unknown)."""

    instances: tuple[ServiceInstance, ...]
    ttl: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.instances, tuple):
            raise TypeError(f"instances must be a tuple, got {self.instances!r}")
        for inst in self.instances:
            if not isinstance(inst, ServiceInstance):
                raise TypeError(f"instances must hold ServiceInstances, got {inst!r}")
        check_optional_number("ttl", self.ttl, 0.0)


class PollingSource(ABC):
    """The polling half of a :class:`~codomyrmex.service_mesh.discovery.Source`."""

    def __init__(
        self,
        *,
        min_interval: float = 1.0,
        max_interval: float = 300.0,
        retry_interval: float = 1.0,
    ) -> None:
        self.min_interval = check_number("min_interval", min_interval, 0.001)
        self.max_interval = check_number("max_interval", max_interval, 0.001)
        if self.max_interval < self.min_interval:
            raise ValueError(
                f"max_interval must be >= min_interval ({min_interval!r}), got {max_interval!r}"
            )
        self.retry_interval = check_number("retry_interval", retry_interval, 0.001)
        self._ttl: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    @abstractmethod
    def description(self) -> str: ...

    @abstractmethod
    def resolve(self) -> Resolution:
        """One listing, now; raises when the source cannot answer properly."""

    def refresh(self, resolver: Resolver) -> None:
        resolution = self.resolve()
        self._ttl = resolution.ttl
        resolver.replace(resolution.instances)

    def next_delay(self, ok: bool) -> float:
        """Seconds until the next listing: the TTL within bounds, or the retry interval."""
        if not ok:
            return min(self.retry_interval, self.max_interval)
        ttl = self.max_interval if self._ttl is None else self._ttl
        return min(max(ttl, self.min_interval), self.max_interval)

    def start(self, resolver: Resolver) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop = threading.Event()
            stop = self._stop
            self._thread = threading.Thread(
                target=self._run,
                args=(resolver, stop),
                name=f"discovery {self.description}",
                daemon=True,
            )
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def _run(self, resolver: Resolver, stop: threading.Event) -> None:
        while not stop.is_set():
            ok = resolver.refresh()
            if stop.wait(self.next_delay(ok)):
                return
