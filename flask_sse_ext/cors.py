"""CORS for cross-origin ``EventSource``: an explicit allowlist, matched on ``Origin``.

Credentials (cookies) are allowed for listed origins, so the answer always names the origin,
never ``*``.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Optional

__all__ = ["ALLOWED_HEADERS", "origin_allowed", "cors_headers", "preflight_headers"]

#: What a cross-origin client may send: a token, the replay cursor, and no-cache.
ALLOWED_HEADERS = "Authorization, Last-Event-ID, Cache-Control"


def origin_allowed(origin: Optional[str], allowed: FrozenSet[str], own_origin: str) -> bool:
    """True for a same-origin request (no ``Origin``, or our own) and for a listed origin."""
    return origin is None or origin == own_origin or origin in allowed


def cors_headers(origin: Optional[str], allowed: FrozenSet[str]) -> Dict[str, str]:
    """Headers for a response to ``origin``: empty unless it is in the allowlist."""
    headers = {"Vary": "Origin"}
    if origin is not None and origin in allowed:
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Allow-Credentials"] = "true"
        headers["Access-Control-Expose-Headers"] = "Retry-After"
    return headers


def preflight_headers(origin: str, allowed: FrozenSet[str]) -> Dict[str, str]:
    headers = cors_headers(origin, allowed)
    headers.update(
        {
            "Access-Control-Allow-Methods": "GET",
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": "600",
        }
    )
    return headers
