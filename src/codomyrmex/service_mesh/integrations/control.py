"""Watch and steer a mesh from outside the code that calls through it (standard library only).

What the dashboard, the MCP server and the status endpoint share:

- :class:`MeshMonitor` subscribes to a mesh's events and keeps, over a rolling
  window, each service's success rate, request rate and latency percentiles,
  each breaker's rejections, and a timeline of breaker transitions, ejections
  and health changes. ``snapshot()`` is ``mesh.status()`` plus those.
- :func:`apply_action` performs one write action on a mesh (``force_open``,
  ``reset``, ``set_health``, ``set_strategy``), validating its input strictly.
- :class:`LocalMesh` (a mesh in this process) and :class:`RemoteMesh` (the
  status endpoint of another process) are the two *sources* the front ends
  read and steer: ``snapshot()`` and ``act(action)``.
- :func:`check_token` compares a presented token with the expected one in
  constant time. A front end without a token refuses every write.

The write actions, as JSON objects::

    {"action": "force_open", "breaker": "orders"}
    {"action": "reset", "breaker": "orders"}
    {"action": "set_health", "service": "orders", "instance_id": "orders-2", "healthy": false}
    {"action": "set_strategy", "service": "orders", "strategy": "least_connections"}
"""

from __future__ import annotations

import hmac
import json
import math
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar

from .._validate import check_instance
from ..errors import CircuitOpenError
from ..events import (
    CallFailed,
    CallRejected,
    CallSucceeded,
    Event,
    InstanceEjected,
    InstanceHealthChanged,
    InstanceReturned,
    StateTransition,
)
from ..load_balancer import LoadBalancerStrategy
from ..mesh import Mesh
from ._listening import MeshListener

__all__ = [
    "WRITE_ACTIONS",
    "LocalMesh",
    "MeshMonitor",
    "MeshSource",
    "RemoteError",
    "RemoteMesh",
    "apply_action",
    "bearer",
    "check_token",
    "handle_write",
    "status_url",
]

_T = TypeVar("_T")

WRITE_ACTIONS = ("force_open", "reset", "set_health", "set_strategy")
"""The actions :func:`apply_action` performs."""


def check_token(expected: str | None, given: str | None) -> bool:
    """Whether ``given`` is the expected token (False whenever no token is expected)."""
    if not expected or not isinstance(given, str):
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _error(message: str) -> dict[str, Any]:
    return {"status": "error", "message": message}


def _text(action: Mapping[str, Any], field: str) -> str | dict[str, Any]:
    value = action.get(field)
    if value is None or value == "":
        return _error(f"missing parameter: {field} (required for {action.get('action')})")
    if not isinstance(value, str):
        return _error(f"{field} must be a string, got {value!r}")
    return value


def _registered(
    action: Mapping[str, Any], field: str, registered: Mapping[str, _T]
) -> tuple[str, _T] | dict[str, Any]:
    """The name in ``action[field]`` and what ``registered`` holds under it, or an error."""
    name = _text(action, field)
    if isinstance(name, dict):
        return name
    found = registered.get(name)
    if found is None:
        known = ", ".join(sorted(registered)) or "none"
        return _error(f"unknown {field} {name!r} (registered: {known})")
    return name, found


def apply_action(mesh: Mesh, action: Mapping[str, Any]) -> dict[str, Any]:
    """Perform one write action on ``mesh``; ``{"status": "success", ...}`` or an error
    result ``{"status": "error", "message": ...}`` for any bad input (nothing changes)."""
    if not isinstance(action, Mapping):
        return _error(f"an action must be a JSON object, got {action!r}")
    name = action.get("action")
    if name not in WRITE_ACTIONS:
        return _error(f"invalid action {name!r}: must be one of {', '.join(WRITE_ACTIONS)}")
    if name in ("force_open", "reset"):
        found_breaker = _registered(action, "breaker", mesh.circuit_breakers())
        if isinstance(found_breaker, dict):
            return found_breaker
        breaker_name, breaker = found_breaker
        if name == "force_open":
            breaker.force_open()
        else:
            breaker.reset()
        return {"status": "success", "action": name, "breaker": breaker_name,
                "state": breaker.state.value}  # fmt: skip
    found_service = _registered(action, "service", mesh.services())
    if isinstance(found_service, dict):
        return found_service
    service, proxy = found_service
    balancer = proxy.load_balancer
    if name == "set_strategy":
        strategy = _text(action, "strategy")
        if isinstance(strategy, dict):
            return strategy
        try:
            balancer.strategy = LoadBalancerStrategy.parse(strategy)
        except (TypeError, ValueError):
            names = ", ".join(s.value for s in LoadBalancerStrategy)
            return _error(f"invalid strategy {strategy!r}: must be one of {names}")
        return {"status": "success", "action": name, "service": service,
                "strategy": balancer.strategy.value}  # fmt: skip
    instance_id = _text(action, "instance_id")
    if isinstance(instance_id, dict):
        return instance_id
    healthy = action.get("healthy")
    if healthy is None:
        return _error("missing parameter: healthy (required for set_health)")
    if not isinstance(healthy, bool):
        return _error(f"healthy must be a boolean (true or false), got {healthy!r}")
    if not balancer.mark_healthy(instance_id, healthy):
        known = ", ".join(i.id for i in balancer.instances) or "none"
        return _error(
            f"unknown instance {instance_id!r} in service {service!r} (instances: {known})"
        )
    return {"status": "success", "action": name, "service": service,
            "instance_id": instance_id, "healthy": healthy}  # fmt: skip


# -- live statistics ---------------------------------------------------------------------


def percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending, non-empty list."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class _Series:
    """One service's attempts in the window: (time, outcome, duration or None)."""

    __slots__ = ("samples",)

    def __init__(self, limit: int) -> None:
        self.samples: deque[tuple[float, str, float | None]] = deque(maxlen=limit)

    def expire(self, oldest: float) -> None:
        samples = self.samples
        while samples and samples[0][0] < oldest:
            samples.popleft()


class MeshMonitor(MeshListener):
    """Rolling statistics and a timeline of one mesh, fed by its events.

    ``window`` seconds of attempts are kept per service (at most ``max_samples``);
    the timeline keeps the last ``max_timeline`` entries. ``clock`` measures the
    window, ``wall`` stamps the timeline (both injectable). :meth:`close` unsubscribes.
    """

    def __init__(
        self,
        mesh: Mesh,
        *,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_samples: int = 10_000,
        max_timeline: int = 200,
        wall: Callable[[], float] = time.time,
    ) -> None:
        check_instance("mesh", mesh, Mesh)
        if isinstance(window, bool) or not isinstance(window, int | float) or not window > 0:
            raise ValueError(f"window must be a number > 0, got {window!r}")
        for field, value in (("max_samples", max_samples), ("max_timeline", max_timeline)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
        if not callable(clock) or not callable(wall):
            raise TypeError("clock and wall must be callables returning seconds")
        self.window = float(window)
        self._limit = max_samples
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._started = clock()
        self._series: dict[str, _Series] = {}
        self._rejections: dict[str, deque[float]] = {}
        self._timeline: deque[dict[str, Any]] = deque(maxlen=max_timeline)
        self._sequence = 0
        self._listen(mesh)

    def __repr__(self) -> str:
        return f"MeshMonitor({self.mesh!r}, window={self.window})"

    @property
    def sequence(self) -> int:
        """Grows by one with every event recorded (a cheap change check)."""
        return self._sequence

    def observe(self, event: Event) -> None:
        """Record one event (the mesh-wide listener)."""
        now = self._clock()
        with self._lock:
            self._sequence += 1
            if isinstance(event, CallSucceeded):
                self._sample(event.source, now, "success", event.duration)
            elif isinstance(event, CallFailed):
                # A refused attempt is counted from the CallRejected the refusal publishes.
                if not isinstance(event.error, CircuitOpenError):
                    self._sample(event.source, now, "failure", event.duration)
            elif isinstance(event, CallRejected):
                if event.by_breaker:
                    times = self._rejections.setdefault(event.source, deque(maxlen=self._limit))
                    times.append(now)
                elif event.reason == "retry_budget":
                    self._note(now, "budget_refused", event.source, reason=event.reason)
                else:
                    self._sample(event.source, now, "rejected", None)
            elif isinstance(event, StateTransition):
                self._note(now, "transition", event.source, old=event.old.value,
                           new=event.new.value)  # fmt: skip
            elif isinstance(event, InstanceEjected):
                self._note(now, "ejected", event.source, instance=event.instance_id,
                           reason=event.reason, duration=event.duration)  # fmt: skip
            elif isinstance(event, InstanceReturned):
                self._note(now, "returned", event.source, instance=event.instance_id,
                           reason=event.reason)  # fmt: skip
            elif isinstance(event, InstanceHealthChanged):
                self._note(now, "health", event.source, instance=event.instance_id,
                           healthy=event.healthy)  # fmt: skip

    def _sample(self, service: str, now: float, outcome: str, duration: float | None) -> None:
        series = self._series.get(service)
        if series is None:
            series = self._series[service] = _Series(self._limit)
        series.samples.append((now, outcome, duration))

    def _note(self, now: float, kind: str, source: str, **detail: Any) -> None:
        at = datetime.fromtimestamp(self._wall(), tz=timezone.utc).isoformat()
        self._timeline.append({"kind": kind, "source": source, "at": at, **detail})

    def stats(self) -> dict[str, Any]:
        """Per service and breaker, over the window: rates, counts and latency percentiles."""
        now = self._clock()
        oldest = now - self.window
        span = max(min(self.window, now - self._started), 1e-9)
        services: dict[str, Any] = {}
        breakers: dict[str, Any] = {}
        with self._lock:
            for name, series in self._series.items():
                series.expire(oldest)
                counts = {"success": 0, "failure": 0, "rejected": 0}
                durations = []
                for _, outcome, duration in series.samples:
                    counts[outcome] += 1
                    if duration is not None:
                        durations.append(duration)
                total = sum(counts.values())
                durations.sort()
                services[name] = {
                    "requests": total,
                    "successes": counts["success"],
                    "failures": counts["failure"],
                    "rejected": counts["rejected"],
                    "success_rate": None if total == 0 else counts["success"] / total,
                    "request_rate": total / span,
                    "latency_ms": None
                    if not durations
                    else {
                        f"p{p}": round(percentile(durations, p / 100) * 1000, 3)
                        for p in (50, 90, 99)
                    },
                }
            for name, times in self._rejections.items():
                while times and times[0] < oldest:
                    times.popleft()
                breakers[name] = {"rejections": len(times), "rejection_rate": len(times) / span}
        return {"window_seconds": self.window, "services": services, "breakers": breakers}

    def timeline(self) -> list[dict[str, Any]]:
        """The recorded transitions, ejections, returns and health changes, oldest first."""
        with self._lock:
            return list(self._timeline)

    def snapshot(self) -> dict[str, Any]:
        """``mesh.status()`` plus ``stats`` and ``timeline``."""
        return {**self.mesh.status(), "stats": self.stats(), "timeline": self.timeline()}


# -- sources ------------------------------------------------------------------------------


class MeshSource(Protocol):
    """What a front end reads and steers: a mesh here, or another process's."""

    def snapshot(self) -> dict[str, Any]: ...

    def act(self, action: Mapping[str, Any]) -> dict[str, Any]: ...


class LocalMesh:
    """A mesh of this process as a source (with live statistics when given a monitor)."""

    def __init__(self, mesh: Mesh, monitor: MeshMonitor | None = None) -> None:
        check_instance("mesh", mesh, Mesh)
        if monitor is not None and not isinstance(monitor, MeshMonitor):
            raise TypeError(f"monitor must be a MeshMonitor, got {monitor!r}")
        self.mesh = mesh
        self.monitor = monitor

    def __repr__(self) -> str:
        return f"LocalMesh({self.mesh!r})"

    def snapshot(self) -> dict[str, Any]:
        if self.monitor is not None:
            return self.monitor.snapshot()
        return self.mesh.status()

    def act(self, action: Mapping[str, Any]) -> dict[str, Any]:
        return apply_action(self.mesh, action)


class RemoteError(OSError):
    """The status endpoint of the remote process did not answer, or not with JSON."""


def status_url(url: str) -> str:
    """``url`` as a full status URL: ``http://`` added, an empty path read as ``/status``."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"url must be a non-empty string, got {url!r}")
    url = url.strip()
    url = url if "://" in url else f"http://{url}"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"url must be an http(s) URL, got {url!r}")
    if parts.path in ("", "/"):
        url = urllib.parse.urlunsplit(parts._replace(path="/status"))
    return url


class RemoteMesh:
    """The mesh of another process, through its status endpoint.

    ``snapshot()`` is ``GET url``; ``act(action)`` is ``POST url/actions`` with the
    token as a bearer token (the endpoint refuses writes without the right one).
    """

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 3.0) -> None:
        self.url = status_url(url)
        self.actions_url = self.url.rstrip("/") + "/actions"
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("token must be a non-empty string or None")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError(f"timeout must be a number > 0, got {timeout!r}")
        self.token = token
        self.timeout = float(timeout)

    def __repr__(self) -> str:
        return f"RemoteMesh({self.url!r})"

    @property
    def writable(self) -> bool:
        """Whether writes are sent at all (a token was given)."""
        return self.token is not None

    def snapshot(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout) as response:
                payload = json.load(response)
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise RemoteError(f"nothing answered at {self.url} ({reason})") from error
        except ValueError as error:
            raise RemoteError(f"{self.url} did not answer JSON: {error}") from error
        if not isinstance(payload, dict) or not isinstance(payload.get("services"), list):
            raise RemoteError(f"{self.url} did not answer a mesh status")
        return payload

    def act(self, action: Mapping[str, Any]) -> dict[str, Any]:
        if self.token is None:
            return _error("read-only: no token given for writes to " + self.url)
        request = urllib.request.Request(
            self.actions_url,
            data=json.dumps(dict(action)).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            body = error.read()
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            return _error(f"nothing answered at {self.actions_url} ({reason})")
        try:
            payload = json.loads(body)
        except ValueError:
            return _error(f"{self.actions_url} did not answer JSON")
        if not isinstance(payload, dict) or payload.get("status") not in ("success", "error"):
            return _error(f"{self.actions_url} did not answer an action result")
        return payload


def handle_write(
    source: MeshSource, expected_token: str | None, authorization: str | None, body: bytes
) -> tuple[int, dict[str, Any]]:
    """One HTTP write request, for every server here: (status code, JSON body).

    403 when the server has no token (read-only), 401 when none or a wrong one is
    presented, 400 for a body that is not a valid action, 200 when applied.
    """
    if not expected_token:
        return 403, _error("read-only: this endpoint was started without a token")
    if not check_token(expected_token, bearer(authorization)):
        return 401, _error("a valid token is required (Authorization: Bearer <token>)")
    try:
        action = json.loads(body or b"null")
    except ValueError:
        return 400, _error("the body must be a JSON object")
    if not isinstance(action, dict):
        return 400, _error("the body must be a JSON object")
    result = source.act(action)
    return (200 if result.get("status") == "success" else 400), result
