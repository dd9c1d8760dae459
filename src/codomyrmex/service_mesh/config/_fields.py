"""The settings a configuration may hold: one table, read by the checks and the JSON Schema.

Each section (``breaker``, ``retry``, ...) maps a key to a :class:`Field`: its
kind, bounds and description. A check returns the error text without the path
(``"must be >= 0, got -1"``); the caller puts the path in front.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..load_balancer import LoadBalancerStrategy
from ..retry import JITTER_MODES

__all__ = ["SECTIONS", "Field", "check_value", "field_schema"]


@dataclass(frozen=True)
class Field:
    """One setting: what it may hold."""

    kind: str
    """``int``, ``number``, ``bool``, ``str``, ``choice``, ``jitter``, ``statuses``,
    ``strings``, ``exceptions`` or ``instances``."""
    description: str
    minimum: float | None = None
    exclusive_minimum: bool = False
    maximum: float | None = None
    nullable: bool = False
    choices: tuple[str, ...] = ()


def _describe(value: Any) -> str:
    return repr(value)


def _number_error(field: Field, value: Any, *, integer: bool) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be {'an integer' if integer else 'a number'}, got {_describe(value)}"
    if integer and not isinstance(value, int):
        return f"must be an integer, got {_describe(value)}"
    if not math.isfinite(value):
        return f"must be finite, got {_describe(value)}"
    low = field.minimum
    if low is not None:
        if field.exclusive_minimum and not value > low:
            return f"must be > {low:g}, got {_describe(value)}"
        if not field.exclusive_minimum and value < low:
            return f"must be >= {low:g}, got {_describe(value)}"
    if field.maximum is not None and value > field.maximum:
        return f"must be <= {field.maximum:g}, got {_describe(value)}"
    return None


def resolve_exception(name: str) -> type[BaseException]:
    """The exception class ``module:Name`` (or ``module.Name``, or a builtin's name)."""
    module_name, _, attr = name.rpartition(":") if ":" in name else name.rpartition(".")
    module = importlib.import_module(module_name or "builtins")
    found = getattr(module, attr, None)
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        raise ValueError(f"{name!r} is not an exception class")  # noqa: TRY004
    return found


def _instance_error(value: Any) -> str | None:
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            return f"must be 'host:port', got {value!r}"
        return None
    if isinstance(value, Mapping):
        unknown = set(value) - {"id", "host", "port", "weight"}
        if unknown:
            return f"unknown key {sorted(unknown)[0]!r} (expected id, host, port, weight)"
        if not isinstance(value.get("host"), str) or not value.get("host"):
            return f"host must be a non-empty string, got {value.get('host')!r}"
        number = value.get("port")
        if isinstance(number, bool) or not isinstance(number, int) or not 0 < number <= 65535:
            return f"port must be a port number, got {number!r}"
        weight = value.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            return f"weight must be a number > 0, got {weight!r}"
        if "id" in value and (not isinstance(value["id"], str) or not value["id"]):
            return f"id must be a non-empty string, got {value['id']!r}"
        return None
    return f"must be 'host:port' or a table with host and port, got {value!r}"


def check_value(field: Field, value: Any) -> str | None:
    """What is wrong with ``value`` for ``field`` (None: nothing)."""
    if value is None:
        return None if field.nullable else f"must not be null, got {value!r}"
    kind = field.kind
    if kind in ("int", "number"):
        return _number_error(field, value, integer=kind == "int")
    if kind == "bool":
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if kind == "str":
        if isinstance(value, str) and value:
            return None
        return f"must be a non-empty string, got {value!r}"
    if kind == "choice":
        if isinstance(value, str) and value.lower() in field.choices:
            return None
        return f"must be one of {', '.join(field.choices)}; got {value!r}"
    if kind == "jitter":
        if isinstance(value, bool) or (isinstance(value, str) and value in JITTER_MODES):
            return None
        return f"must be true, false or one of {', '.join(JITTER_MODES)}; got {value!r}"
    if not isinstance(value, list):
        return f"must be a list, got {value!r}"
    for i, item in enumerate(value):
        if kind == "statuses":
            if isinstance(item, bool) or not isinstance(item, int) or not 100 <= item <= 599:
                return f"[{i}] must be an HTTP status (100 to 599), got {item!r}"
        elif kind == "strings":
            if not isinstance(item, str) or not item:
                return f"[{i}] must be a non-empty string, got {item!r}"
        elif kind == "exceptions":
            if not isinstance(item, str) or not item:
                return f"[{i}] must be an exception class name, got {item!r}"
            try:
                resolve_exception(item)
            except (ImportError, ValueError) as error:
                return f"[{i}] must name an exception class (module:Name), got {item!r}: {error}"
        elif kind == "instances":
            problem = _instance_error(item)
            if problem is not None:
                return f"[{i}] {problem}"
    return None


def field_schema(field: Field) -> dict[str, Any]:
    """The JSON Schema of one setting."""
    schema: dict[str, Any]
    kind = field.kind
    if kind in ("int", "number"):
        schema = {"type": "integer" if kind == "int" else "number"}
        if field.minimum is not None:
            key = "exclusiveMinimum" if field.exclusive_minimum else "minimum"
            schema[key] = field.minimum
        if field.maximum is not None:
            schema["maximum"] = field.maximum
    elif kind == "bool":
        schema = {"type": "boolean"}
    elif kind == "str":
        schema = {"type": "string", "minLength": 1}
    elif kind == "choice":
        schema = {"enum": list(field.choices)}
    elif kind == "jitter":
        schema = {"anyOf": [{"type": "boolean"}, {"enum": list(JITTER_MODES)}]}
    elif kind == "statuses":
        schema = {"type": "array", "items": {"type": "integer", "minimum": 100, "maximum": 599}}
    elif kind in ("strings", "exceptions"):
        schema = {"type": "array", "items": {"type": "string", "minLength": 1}}
    else:  # instances
        schema = {
            "type": "array",
            "items": {
                "anyOf": [
                    {"type": "string", "pattern": "^.+:[0-9]+$"},
                    {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string", "minLength": 1},
                            "host": {"type": "string", "minLength": 1},
                            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                            "weight": {"type": "number", "exclusiveMinimum": 0},
                        },
                        "required": ["host", "port"],
                        "additionalProperties": False,
                    },
                ]
            },
        }
    if field.nullable:
        schema = {"anyOf": [schema, {"type": "null"}]}
    schema["description"] = field.description
    return schema


def _percent(description: str, *, nullable: bool = False, zero: bool = False) -> Field:
    return Field(
        "number",
        description,
        minimum=0.0,
        exclusive_minimum=not zero,
        maximum=100.0,
        nullable=nullable,
    )


_BREAKER: dict[str, Field] = {
    "failure_threshold": Field("int", "Consecutive failures that open the circuit.", 1),
    "success_threshold": Field("int", "Successful probes (HALF_OPEN) that close it.", 1),
    "timeout_seconds": Field("number", "Seconds the circuit stays OPEN before probing.", 0),
    "half_open_max_calls": Field("int", "Probes in flight at once while HALF_OPEN.", 1),
    "failure_rate_threshold": _percent(
        "Failure percentage over the sliding window that opens it (window mode).", nullable=True
    ),
    "sliding_window_type": Field(
        "choice",
        "'count': the last N calls; 'time': the last N seconds.",
        choices=("count", "time"),
    ),
    "sliding_window_size": Field("int", "N, in calls or seconds.", 1),
    "minimum_number_of_calls": Field("int", "Calls the window needs before judging.", 1),
    "slow_call_duration_threshold": Field(
        "number", "Seconds after which a call counts as slow.", 0, nullable=True
    ),
    "slow_call_rate_threshold": _percent("Slow-call percentage that opens the circuit."),
    "open_backoff_multiplier": Field("number", "Each re-open multiplies the OPEN wait by this.", 1),
    "max_open_seconds": Field("number", "Cap on the grown OPEN wait.", 0, nullable=True),
    "record_exceptions": Field(
        "exceptions", "Exception classes (module:Name) that count as failures."
    ),
    "ignore_exceptions": Field(
        "exceptions", "Exception classes (module:Name) that count as nothing."
    ),
}

SECTIONS: dict[str, dict[str, Field]] = {
    "breaker": _BREAKER,
    "retry": {
        "max_retries": Field("int", "Retries after the first attempt (0: none).", 0),
        "initial_delay": Field("number", "Seconds of backoff before the first retry.", 0),
        "max_delay": Field("number", "Longest backoff in seconds.", 0),
        "exponential_base": Field("number", "Backoff growth per retry.", 1),
        "jitter": Field("jitter", "true (full), false, or a jitter mode."),
        "attempt_timeout": Field(
            "number", "Seconds one attempt may take.", 0, exclusive_minimum=True, nullable=True
        ),
        "max_elapsed": Field(
            "number",
            "Seconds the whole call may take (no attempt starts later).",
            0,
            nullable=True,
        ),
    },
    "budget": {
        "type": Field(
            "choice",
            "Retry budget: 'none', gRPC's 'token_bucket' or Finagle's 'percentage'.",
            choices=("none", "token_bucket", "percentage"),
        ),
        "max_tokens": Field("number", "token_bucket: bucket size.", 1),
        "token_ratio": Field("number", "token_bucket: tokens a success refunds.", 0),
        "percent": Field("number", "percentage: retries as a percent of requests.", 0),
        "min_retries_per_second": Field("number", "percentage: retries always allowed.", 0),
        "window_seconds": Field("int", "percentage: seconds of the window.", 1),
    },
    "balancing": {
        "strategy": Field(
            "choice",
            "How an instance is picked.",
            choices=tuple(s.value for s in LoadBalancerStrategy),
        ),
        "panic_threshold": _percent(
            "Below this percent of available instances, pick among all of them.", zero=True
        ),
        "slow_start_window": Field(
            "number",
            "Seconds a new or recovered instance ramps up over (null: off).",
            0,
            exclusive_minimum=True,
            nullable=True,
        ),
        "slow_start_aggression": Field("number", "1: linear ramp.", 0, exclusive_minimum=True),
        "slow_start_min_weight_percent": _percent("Share a ramping instance starts from."),
        "ewma_decay": Field("number", "PEAK_EWMA decay in seconds.", 0, exclusive_minimum=True),
        "ring_replicas": Field("int", "RING_HASH points per unit of weight.", 1),
        "maglev_table_size": Field("int", "MAGLEV table size (a prime).", 3),
    },
    "outlier_detection": {
        "enabled": Field("bool", "Whether instances that keep failing are ejected."),
        "consecutive_failures": Field(
            "int", "Failures in a row that eject an instance (null: off).", 1, nullable=True
        ),
        "interval": Field(
            "number", "Seconds of the failure-rate window.", 0, exclusive_minimum=True
        ),
        "base_ejection_time": Field(
            "number", "Seconds of the first ejection.", 0, exclusive_minimum=True
        ),
        "max_ejection_time": Field("number", "Longest ejection in seconds.", 0),
        "max_ejection_percent": _percent("Most instances ejected at once, in percent.", zero=True),
        "failure_rate_threshold": _percent(
            "Failure percentage over the interval that ejects (null: off).", nullable=True
        ),
        "failure_rate_minimum_calls": Field("int", "Calls before a rate is judged.", 1),
    },
    "bulkhead": {
        "max_concurrent": Field("int", "Calls at once at most.", 1),
        "max_queue": Field("int", "Calls that may wait for a slot.", 0),
        "queue_timeout": Field(
            "number", "Seconds a call may wait (null: forever).", 0, nullable=True
        ),
    },
    "hedging": {
        "delay": Field(
            "number",
            "Seconds before another attempt starts on another instance (null: off).",
            0,
            nullable=True,
        ),
        "max_attempts": Field("int", "Hedged attempts at most.", 1),
    },
}
"""The per-service sections, shared by ``defaults`` and ``services.NAME``."""

HTTP: dict[str, Field] = {
    "failure_statuses": Field("statuses", "HTTP statuses that count as failed attempts."),
    "retry_methods": Field("strings", "HTTP methods that may be sent more than once."),
}
"""The ``http`` section: options of the httpx transports."""

INSTANCE_BREAKER: dict[str, Field] = {
    "enabled": Field("bool", "Whether the httpx transports keep a breaker per instance."),
    **_BREAKER,
}
"""The ``instance_breaker`` section: the httpx transports' per-instance breaker."""
