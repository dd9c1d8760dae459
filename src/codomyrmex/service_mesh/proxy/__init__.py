"""The service proxy: the pipeline of one call and its stages.

- :mod:`.proxy`: :class:`ServiceProxy`, its stages in order, and the sync and async
  drivers of its attempts.
- :mod:`.pipeline`: the attempt pipeline's decisions (pick, record, retry, fail over,
  give up), written once for both drivers.
- :mod:`.stages`: bulkhead, hedging and attempt timeouts.
"""

from __future__ import annotations

from .proxy import ServiceProxy

__all__ = ["ServiceProxy"]
