"""Download links of the local store: an HMAC over what the link grants, and until when.

Pure: no clock (the caller passes ``now``), no I/O, no trio. The token is HMAC-SHA256, keyed
with the api's download secret, over ``pcapd-download-v1|<capture id>|<user id>|<expires>``
(ids never hold ``|``), written as unpadded base64url (43 characters). A link names the
capture and its expiry in the clear; the user id is not in it, but the token binds it: the
api finds the capture's owner from its record and checks the token against that.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

_DOMAIN = b"pcapd-download-v1"


def sign(secret: bytes, capture_id: str, user_id: str, expires: int) -> str:
    """The token that lets a link download ``capture_id`` of ``user_id`` until ``expires``."""
    message = b"|".join((_DOMAIN, capture_id.encode(), user_id.encode(), str(expires).encode()))
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verify(
    secret: bytes, capture_id: str, user_id: str, expires: int, token: str, now: float
) -> bool:
    """True when ``token`` is :func:`sign`'s for these values and ``now`` is before
    ``expires``. Constant-time in the token; any text is a valid (wrong) token."""
    expected = sign(secret, capture_id, user_id, expires).encode("ascii")
    given = token.encode("utf-8", "replace")
    return hmac.compare_digest(expected, given) and now < expires
