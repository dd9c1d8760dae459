"""The Lua scripts of the Redis integration: their text, the arguments they take and
what they return.

The scripts live in this package's ``lua/`` folder (shipped with it). The breaker
scripts share one prelude (arguments, loading the state, ``enter`` and ``finish``):
``lua_source("prelude", "record")`` is one script. Every breaker script takes
KEYS = state hash, probes zset, window hash; ARGV[1..17] from :func:`breaker_args`,
its own arguments from ARGV[18]; it returns the fleet's state (:func:`parse_reply`)
and publishes transitions (:func:`parse_message`). Times are milliseconds.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from ...circuit_breaker import CircuitBreakerConfig, CircuitState
from ...store import SharedState
from .connection import text

if TYPE_CHECKING:
    from .store import RedisStore

__all__ = ["breaker_args", "lua_source", "parse_message", "parse_reply"]

_STATES = {state.value: state for state in CircuitState}


def lua_source(*names: str) -> str:
    """The concatenated text of ``lua/<name>.lua`` for each name, in order."""
    folder = files(__name__.rpartition(".")[0]) / "lua"
    return "\n".join((folder / f"{name}.lua").read_text(encoding="utf-8") for name in names)


def breaker_args(
    store: RedisStore, name: str, origin: str, config: CircuitBreakerConfig
) -> list[str | int | float]:
    """The arguments every breaker script starts with (see ``lua/prelude.lua``).

    The last one is the script's clock: empty, so that Redis ``TIME`` decides.
    """
    slow = config.slow_call_duration_threshold
    return [
        f"{store.prefix}cb:events",
        name,
        origin,
        max(1, round(store.key_ttl * 1000)),
        config.failure_threshold,
        config.success_threshold,
        round(config.timeout_seconds * 1000),
        config.open_backoff_multiplier,
        -1 if config.max_open_seconds is None else round(config.max_open_seconds * 1000),
        config.half_open_max_calls,
        max(1, round(store.probe_lease * 1000)),
        config.sliding_window_type if config.windowed else "none",
        config.sliding_window_size,
        config.minimum_calls,
        config.window_failure_rate,
        -1 if slow is None else config.slow_call_rate_threshold,
        "",
    ]


def _failure_age(value: Any) -> float | None:
    """A script's or message's failure age: seconds, or None (negative: never failed)."""
    age = float(text(value))
    return None if age < 0 else age


def parse_reply(reply: Any) -> tuple[SharedState, str, bool]:
    """A breaker script's reply: the fleet's state, the key's flag, whether a probe was granted.

    The flag is ``"ok"``, ``"missing"``, ``"created"`` or ``"corrupt"``.
    """
    state, version, failures, retry_after, reopens, flag, granted, age = reply
    shared = SharedState(
        state=_STATES[text(state)],
        version=int(version),
        failures=int(failures),
        retry_after=float(text(retry_after)),
        reopens=int(reopens),
        last_failure_age=_failure_age(age),
    )
    return shared, text(flag), bool(int(granted))


def parse_message(data: Any) -> tuple[str, str | None, SharedState]:
    """A published transition: the breaker's name, the origin that made it, the state.

    Raises ValueError, KeyError or TypeError for a malformed message.
    """
    message = json.loads(data)
    shared = SharedState(
        state=_STATES[message["s"]],
        version=int(message["v"]),
        failures=int(message["f"]),
        retry_after=float(message["r"]),
        reopens=int(message["n"]),
        last_failure_age=_failure_age(message.get("l", -1)),
    )
    return str(message["b"]), message.get("o"), shared
