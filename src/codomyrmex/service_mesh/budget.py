"""Compat: retry budgets live in :mod:`codomyrmex.service_mesh.retry.budget`."""

from __future__ import annotations

from .retry.budget import PercentageRetryBudget, RetryBudget, TokenBucketRetryBudget

__all__ = ["PercentageRetryBudget", "RetryBudget", "TokenBucketRetryBudget"]
