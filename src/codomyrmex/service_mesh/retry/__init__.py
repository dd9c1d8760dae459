"""Retries: the options (:class:`RetryPolicy`), one engine holding a call's state,
the retry budgets and the testing switches.

- :mod:`.options`: :class:`RetryPolicy`, validated and frozen, and its sync/async drivers.
- :mod:`.backoff`: ``retry_on`` predicates, :class:`RetryAfter`, jittered backoff.
- :mod:`.engine`: the sans-I/O decisions (retry, wait, give up), deadlines, the nested guard.
- :mod:`.budget`: retry budgets shared by many calls.
- :mod:`.testing`: :func:`set_testing` and :func:`disable_retries`.
"""

from __future__ import annotations

from .backoff import JITTER_MODES, RetryAfter, RetryOn
from .budget import PercentageRetryBudget, RetryBudget, TokenBucketRetryBudget
from .options import RetryPolicy
from .testing import disable_retries, set_testing

__all__ = [
    "JITTER_MODES",
    "PercentageRetryBudget",
    "RetryAfter",
    "RetryBudget",
    "RetryOn",
    "RetryPolicy",
    "TokenBucketRetryBudget",
    "disable_retries",
    "set_testing",
]
