"""The Lua scripts of the Redis integration, read from the ``lua/`` folder of this package."""

from __future__ import annotations

from importlib.resources import files

__all__ = ["lua_source"]


def lua_source(*names: str) -> str:
    """The concatenated text of ``lua/<name>.lua`` for each name, in order.

    The breaker scripts share one prelude (arguments, loading the state, ``enter``
    and ``finish``): ``lua_source("prelude", "record")`` is one script.
    """
    folder = files(__name__.rpartition(".")[0]) / "lua"
    return "\n".join((folder / f"{name}.lua").read_text(encoding="utf-8") for name in names)
