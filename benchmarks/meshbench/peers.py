"""How each library is used: ours and the peers, in their idiomatic forms.

Every import happens inside the function that needs it, so a missing or broken package
turns into an error row for that contender only. Each peer is configured like ours in the
same workload (same failure threshold, same attempt count, zero wait), and peers'
logging/instrumentation on retry is switched off so that they are not charged for work
ours does not do.
"""

from __future__ import annotations

import datetime as dt
import importlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any

LONG_OPEN_S = 3600  # an OPEN breaker stays OPEN for the whole run
ATTEMPTS = 4  # ours: max_retries=3 -> at most 4 attempts; peers get the same

_names = itertools.count()


def unique(prefix: str) -> str:
    """A fresh breaker name (our decorator registry shares breakers by name)."""
    return f"bench-{prefix}-{next(_names)}"


def ours() -> ModuleType:
    """The library under test; ImportError here becomes an error row."""
    return importlib.import_module("codomyrmex.service_mesh")


def version_of(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# Distributions whose versions go into results.json.
DISTRIBUTIONS = (
    "codomyrmex-service-mesh",
    "pybreaker",
    "circuitbreaker",
    "purgatory",
    "interlock-cb",
    "pyresilience",
    "aiobreaker",
    "tenacity",
    "backoff",
    "stamina",
)

# Import names of every peer; the quick test skips (outside CI) when one is missing.
PEER_MODULES = (
    "pybreaker",
    "circuitbreaker",
    "purgatory",
    "interlock",
    "pyresilience",
    "aiobreaker",
    "tenacity",
    "backoff",
    "stamina",
)


# --------------------------------------------------------------------------- breakers


@dataclass(frozen=True)
class BreakerPeer:
    """A peer circuit breaker: how to put a function behind it, what it raises when OPEN."""

    label: str
    decorate: Callable[[Callable[..., Any], str, int], Callable[..., Any]]
    open_error: Callable[[], type[BaseException]]
    sync: bool = True
    is_async: bool = True
    # Raises the same exception object on every rejection, so its traceback grows by a
    # few frames per call (~1.5 KB) unless the caller clears it.
    reraises_one_error: bool = False


def _pybreaker(fn: Callable[..., Any], name: str, threshold: int) -> Callable[..., Any]:
    import pybreaker

    breaker = pybreaker.CircuitBreaker(fail_max=threshold, reset_timeout=LONG_OPEN_S, name=name)
    wrapped: Callable[..., Any] = breaker(fn)
    return wrapped


def _pybreaker_error() -> type[BaseException]:
    import pybreaker

    return pybreaker.CircuitBreakerError


def _circuitbreaker(fn: Callable[..., Any], name: str, threshold: int) -> Callable[..., Any]:
    import circuitbreaker

    breaker = circuitbreaker.CircuitBreaker(
        failure_threshold=threshold, recovery_timeout=LONG_OPEN_S, name=name
    )
    wrapped: Callable[..., Any] = breaker(fn)
    return wrapped


def _circuitbreaker_error() -> type[BaseException]:
    import circuitbreaker

    error: type[BaseException] = circuitbreaker.CircuitBreakerError
    return error


def _purgatory(fn: Callable[..., Any], name: str, threshold: int) -> Callable[..., Any]:
    import inspect

    import purgatory

    factory: Any
    if inspect.iscoroutinefunction(fn):
        factory = purgatory.AsyncCircuitBreakerFactory(
            default_threshold=threshold, default_ttl=LONG_OPEN_S
        )
    else:
        factory = purgatory.SyncCircuitBreakerFactory(
            default_threshold=threshold, default_ttl=LONG_OPEN_S
        )
    wrapped: Callable[..., Any] = factory(name)(fn)
    return wrapped


def _purgatory_error() -> type[BaseException]:
    from purgatory.domain.model import OpenedState

    return OpenedState


def _interlock(fn: Callable[..., Any], name: str, threshold: int) -> Callable[..., Any]:
    import interlock

    config = interlock.Config(minimum_number_of_calls=threshold, wait_duration_in_open=LONG_OPEN_S)
    wrapped: Callable[..., Any] = interlock.CircuitBreaker(name=name, config=config)(fn)
    return wrapped


def _interlock_error() -> type[BaseException]:
    import interlock

    return interlock.CircuitOpenError


def _pyresilience(fn: Callable[..., Any], name: str, threshold: int) -> Callable[..., Any]:
    import pyresilience

    config = pyresilience.CircuitBreakerConfig(
        failure_threshold=threshold, recovery_timeout=LONG_OPEN_S
    )
    wrapped: Callable[..., Any] = pyresilience.resilient(circuit_breaker=config)(fn)
    return wrapped


def _pyresilience_error() -> type[BaseException]:
    import pyresilience

    return pyresilience.CircuitOpenError


def _aiobreaker(fn: Callable[..., Any], name: str, threshold: int) -> Callable[..., Any]:
    import aiobreaker

    breaker = aiobreaker.CircuitBreaker(
        fail_max=threshold, timeout_duration=dt.timedelta(seconds=LONG_OPEN_S), name=name
    )
    wrapped: Callable[..., Any] = breaker(fn)
    return wrapped


def _aiobreaker_error() -> type[BaseException]:
    import aiobreaker

    error: type[BaseException] = aiobreaker.CircuitBreakerError
    return error


BREAKER_PEERS = (
    BreakerPeer("pybreaker", _pybreaker, _pybreaker_error, is_async=False),
    BreakerPeer("circuitbreaker", _circuitbreaker, _circuitbreaker_error),
    BreakerPeer("purgatory", _purgatory, _purgatory_error, reraises_one_error=True),
    BreakerPeer("interlock-cb", _interlock, _interlock_error),
    BreakerPeer("pyresilience", _pyresilience, _pyresilience_error),
    BreakerPeer("aiobreaker", _aiobreaker, _aiobreaker_error, sync=False),
)


def breaker_peer(label: str) -> BreakerPeer:
    return next(p for p in BREAKER_PEERS if p.label == label)


def make_memory_makers() -> dict[str, Callable[[], Callable[[str], object]]]:
    """Per library: a function returning ``make(name) -> idle breaker`` (library defaults)."""

    def ours_make() -> Callable[[str], object]:
        cls = ours().CircuitBreaker
        return lambda name: cls(name)

    def pybreaker_make() -> Callable[[str], object]:
        import pybreaker

        return lambda name: pybreaker.CircuitBreaker(name=name)

    def circuitbreaker_make() -> Callable[[str], object]:
        import circuitbreaker

        return lambda name: circuitbreaker.CircuitBreaker(name=name)

    def interlock_make() -> Callable[[str], object]:
        import interlock

        return lambda name: interlock.CircuitBreaker(name=name)

    def pyresilience_make() -> Callable[[str], object]:
        import pyresilience

        config = pyresilience.CircuitBreakerConfig()  # required; shared, as users would
        return lambda name: pyresilience.CircuitBreaker(config)

    def aiobreaker_make() -> Callable[[str], object]:
        import aiobreaker

        return lambda name: aiobreaker.CircuitBreaker(name=name)

    def purgatory_make() -> Callable[[str], object]:
        import purgatory

        factory = purgatory.SyncCircuitBreakerFactory()

        def make(name: str) -> object:
            factory.get_breaker(name)  # the factory's repository holds the breaker state
            return None

        return make

    return {
        "ours": ours_make,
        "pybreaker": pybreaker_make,
        "circuitbreaker": circuitbreaker_make,
        "purgatory": purgatory_make,
        "interlock-cb": interlock_make,
        "pyresilience": pyresilience_make,
        "aiobreaker": aiobreaker_make,
    }


# --------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPeer:
    label: str
    decorate: Callable[[Callable[..., Any]], Callable[..., Any]]


def _tenacity(fn: Callable[..., Any]) -> Callable[..., Any]:
    import tenacity

    wrapped: Callable[..., Any] = tenacity.retry(
        stop=tenacity.stop_after_attempt(ATTEMPTS), wait=tenacity.wait_none(), reraise=True
    )(fn)
    return wrapped


def _backoff(fn: Callable[..., Any]) -> Callable[..., Any]:
    import backoff

    wrapped: Callable[..., Any] = backoff.on_exception(
        backoff.constant, Exception, max_tries=ATTEMPTS, interval=0, jitter=None, logger=None
    )(fn)
    return wrapped


def _stamina(fn: Callable[..., Any]) -> Callable[..., Any]:
    import stamina
    import stamina.instrumentation

    # stamina logs (and counts in prometheus) every retry by default; ours does not.
    stamina.instrumentation.set_on_retry_hooks([])
    wrapped: Callable[..., Any] = stamina.retry(
        on=Exception,
        attempts=ATTEMPTS,
        timeout=None,
        wait_initial=0.0,
        wait_max=0.0,
        wait_jitter=0.0,
    )(fn)
    return wrapped


RETRY_PEERS = (
    RetryPeer("tenacity", _tenacity),
    RetryPeer("backoff", _backoff),
    RetryPeer("stamina", _stamina),
)
