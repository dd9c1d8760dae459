"""Command-line value parsers: each names what was wrong and the text typed.

argparse puts the option in front (``argument --requests: must be a whole
number, got 'abc'``), so every bad value is reported before anything runs.
Standard library only.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

__all__ = ["count_list", "number", "whole", "writable_file"]


def whole(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """A parser of whole numbers in ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    parse.__name__ = "whole number"
    return parse


def number(minimum: float | None = None, *, above: bool = False) -> Callable[[str], float]:
    """A parser of finite numbers of at least (or, with ``above``, above) ``minimum``."""

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if minimum is not None:
            if above and not value > minimum:
                raise argparse.ArgumentTypeError(f"must be greater than {minimum:g}, got {text}")
            if not above and value < minimum:
                raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def count_list(minimum: int = 1) -> Callable[[str], list[int]]:
    """A parser of ``N[,N...]``: whole numbers of at least ``minimum``."""
    one = whole(minimum)

    def parse(text: str) -> list[int]:
        parts = [p for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"must be N[,N...], got {text!r}")
        try:
            return [one(p) for p in parts]
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentTypeError(f"each value {error} (in {text!r})") from None

    parse.__name__ = "list of numbers"
    return parse


def writable_file(text: str) -> str:
    """A path a file can be written to: its directory exists and is writable."""
    if not text:
        raise argparse.ArgumentTypeError("must be a file path, got ''")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"is a directory, not a file: {text!r}")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"directory {folder!r} does not exist (for {text!r})")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"directory {folder!r} is not writable (for {text!r})")
    return text
