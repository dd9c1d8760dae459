"""Whether two configs are the same configuration, even when they hold distinct functions.

Two decorators naming one breaker often pass configs built the same way, e.g. both
with ``failure_predicate=lambda exc: exc.status >= 500``: two lambda objects that
are never ``==``. Such functions are equivalent when their code is the same (line
numbers aside), they capture equivalent values and the globals they name are the
same objects.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

__all__ = ["equivalent"]

_MISSING = object()


def equivalent(a: Any, b: Any) -> bool:
    """``a == b``, except that equal-looking functions (at any depth) count as equal."""
    if a is b:
        return True
    if isinstance(a, types.FunctionType) and isinstance(b, types.FunctionType):
        return _same_function(a, b)
    if type(a) is not type(b):
        return bool(a == b)
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return all(
            equivalent(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    if isinstance(a, tuple):
        return len(a) == len(b) and all(equivalent(x, y) for x, y in zip(a, b, strict=True))
    try:
        return bool(a == b)
    except Exception:
        return False


def _same_function(f: types.FunctionType, g: types.FunctionType) -> bool:
    if not _same_code(f.__code__, g.__code__):
        return False
    if not equivalent(f.__defaults__, g.__defaults__):
        return False
    if not equivalent(f.__kwdefaults__ or {}, g.__kwdefaults__ or {}):
        return False
    cells_f, cells_g = f.__closure__ or (), g.__closure__ or ()
    if len(cells_f) != len(cells_g):
        return False
    for x, y in zip(cells_f, cells_g, strict=True):
        try:
            if not equivalent(x.cell_contents, y.cell_contents):
                return False
        except ValueError:  # an empty cell
            return False
    if f.__globals__ is not g.__globals__:
        for name in f.__code__.co_names:
            if f.__globals__.get(name, _MISSING) is not g.__globals__.get(name, _MISSING):
                return False
    return True


def _same_code(a: types.CodeType, b: types.CodeType) -> bool:
    if (
        a.co_code != b.co_code
        or a.co_names != b.co_names
        or a.co_varnames != b.co_varnames
        or a.co_freevars != b.co_freevars
        or a.co_cellvars != b.co_cellvars
        or a.co_argcount != b.co_argcount
        or a.co_posonlyargcount != b.co_posonlyargcount
        or a.co_kwonlyargcount != b.co_kwonlyargcount
        or a.co_flags != b.co_flags
        or len(a.co_consts) != len(b.co_consts)
    ):
        return False
    for x, y in zip(a.co_consts, b.co_consts, strict=True):
        if isinstance(x, types.CodeType) and isinstance(y, types.CodeType):
            if not _same_code(x, y):
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True
