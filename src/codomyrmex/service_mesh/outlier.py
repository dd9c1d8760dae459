"""Compatibility module: outlier detection now lives in :mod:`.balancing.outlier`."""

from __future__ import annotations

from .balancing.outlier import (
    CONSECUTIVE_FAILURES,
    DEFAULT_OUTLIER_DETECTION,
    EJECTION_TIME_ELAPSED,
    FAILURE_RATE,
    SUCCESS_RATE,
    HostState,
    OutlierDetectionConfig,
    OutlierDetector,
)

__all__ = [
    "CONSECUTIVE_FAILURES",
    "DEFAULT_OUTLIER_DETECTION",
    "EJECTION_TIME_ELAPSED",
    "FAILURE_RATE",
    "SUCCESS_RATE",
    "HostState",
    "OutlierDetectionConfig",
    "OutlierDetector",
]
