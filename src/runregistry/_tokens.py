"""Control-plane tokens: generation and the bearer-token syntax that ``call`` sends."""

from __future__ import annotations

import re
import secrets
from typing import Final

# 32 random bytes are 256 bits, as much as an HMAC-SHA-256 key. In base64url
# they are 43 characters that need no quoting in headers, URLs or files.
TOKEN_BYTES: Final = 32

# The "b64token" syntax of an RFC 6750 bearer credential. A token outside it
# could split or corrupt the Authorization header line.
_BEARER_TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*\Z")


def new_token() -> str:
    """Return a fresh random token of 256 bits, URL-safe base64 without padding (43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def is_bearer_token(value: str) -> bool:
    """Whether *value* can be sent as ``Authorization: Bearer <value>`` unchanged."""
    return _BEARER_TOKEN.match(value) is not None
