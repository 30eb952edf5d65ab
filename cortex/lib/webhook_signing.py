"""Standard Webhooks 1.0 signing (https://www.standardwebhooks.com) and the reference receiver-side check.

``webhook-id``, ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">``; a ``whsec_`` secret is the base64 of the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time

SECRET_PREFIX = "whsec_"



def signing_key(secret: str) -> bytes:
    """The HMAC key of a secret: base64-decoded after a ``whsec_`` prefix, else the secret's UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        try:
            encoded = secret[len(SECRET_PREFIX) :]
            # unpadded base64 is accepted, as the standard's libraries do
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"{SECRET_PREFIX} secret is not valid base64: {e}") from None
        if not key:
            raise ValueError(f"{SECRET_PREFIX} secret decodes to an empty key")
        return key
    return secret.encode()


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``{msg_id}.{timestamp}.{body}``."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: dict, body: bytes, tolerance: float = 300, now: float | None = None) -> None:
    """Check a delivery as a Standard Webhooks receiver would; raise ``ValueError`` with the reason if bad.

    Header names are case-insensitive. The timestamp must be within ``tolerance`` seconds of ``now``
    (default: the current time). ``webhook-signature`` may hold several space-separated ``v1,<sig>``
    entries (e.g. during secret rotation); any one matching passes.
    """
    lowered = {str(name).lower(): value for name, value in headers.items()}
    missing = [n for n in ("webhook-id", "webhook-timestamp", "webhook-signature") if not lowered.get(n)]
    if missing:
        raise ValueError(f"missing header: {', '.join(missing)}")
    msg_id = str(lowered["webhook-id"])
    raw_timestamp = str(lowered["webhook-timestamp"]).strip()
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise ValueError(f"invalid webhook-timestamp {raw_timestamp!r}") from None
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise ValueError("message timestamp too old")
    if timestamp > current + tolerance:
        raise ValueError("message timestamp too new")
    expected = sign(signing_key(secret), msg_id, timestamp, body).partition(",")[2].encode()
    matched = False
    for entry in str(lowered["webhook-signature"]).split():
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(signature.encode(), expected):
            matched = True  # keep going: the time taken does not depend on which entry matched
    if not matched:
        raise ValueError("no matching signature")
