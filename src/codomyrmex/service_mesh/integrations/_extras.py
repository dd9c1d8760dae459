"""The error an integration raises when the library behind it is not installed."""

from __future__ import annotations

__all__ = ["missing_extra"]


def missing_extra(module: str, extra: str, error: ImportError) -> ImportError:
    """An ImportError for ``module`` that names the extra to install.

    Raise it ``from`` the original error, inside the integration's guarded import.
    """
    return ImportError(
        f"{module} needs the [{extra}] extra ({error}): "
        f"pip install 'codomyrmex-service-mesh[{extra}]'",
        name=error.name,
    )
