"""One counted connection on an instance, and how a call's end is reported to the balancer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import NoHealthyInstanceError
from .instance import ServiceInstance

if TYPE_CHECKING:
    from .balancer import LoadBalancer

__all__ = ["ABORTED", "Connection"]


class _Aborted(BaseException):
    """Marks a call that ended with neither success nor failure (e.g. cancelled)."""


ABORTED = _Aborted()
"""The ``outcome`` passed to ``LoadBalancer.release`` for a call that was cut short."""


class Connection:
    """One counted connection, as a context manager; see :meth:`LoadBalancer.connection`."""

    __slots__ = ("_balancer", "_instance", "_start")

    def __init__(self, balancer: LoadBalancer) -> None:
        self._balancer = balancer
        self._instance: ServiceInstance | None = None
        self._start = 0.0

    def __enter__(self) -> ServiceInstance:
        balancer = self._balancer
        instance = balancer.acquire()
        if instance is None:
            raise NoHealthyInstanceError(balancer.name)
        self._instance = instance
        timer = balancer.observe_clock
        self._start = 0.0 if timer is None else timer()
        return instance

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self._instance is not None:
            if exc is None or isinstance(exc, Exception):
                self._balancer.release(self._instance, self._start, exc)
            else:
                self._balancer.release(self._instance, self._start, ABORTED)
            self._instance = None

    async def __aenter__(self) -> ServiceInstance:
        return self.__enter__()

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)
