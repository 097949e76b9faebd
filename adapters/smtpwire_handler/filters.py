"""Milters and policy servers for any adapter: the stock handlers that consult them around a store.

``MilterHandler`` and ``PolicyHandler`` are for the blocking and MemoryBIO
adapters, ``AsyncMilterHandler`` and ``AsyncPolicyHandler`` for asyncio
and anyio (they need the ``anyio`` extra).  The protocols themselves are
``smtpwire_filters``'s; see docs/filters.md.
"""

from ._milter import AsyncMilterHandler, MilterHandler, MilterSpec, parse_milter_address
from ._policy import HOLD_FOLDER, AsyncPolicyHandler, PolicyHandler, PolicyService

__all__ = [
    "HOLD_FOLDER",
    "AsyncMilterHandler",
    "AsyncPolicyHandler",
    "MilterHandler",
    "MilterSpec",
    "PolicyHandler",
    "PolicyService",
    "parse_milter_address",
]
