"""4Players ODIN access keys and room tokens (compatible with the open-source odin-tokens library).

An access key is 33 bytes: a version byte (0x01), 31 random bytes and a CRC-8 of those 31 bytes, written
as standard base64 without padding (44 characters). Bytes 1..32 (checksum included) are the Ed25519
private seed. The public key is published as standard base64 (``pubKey``), and identified by a key id
derived from SHA-512 of the raw public key. A room token is a compact EdDSA JWS whose claims grant a
user access to one room for a short lifetime.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import time
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ACCESS_KEY_VERSION = 0x01
ACCESS_KEY_LENGTH = 33
KEY_ID_VERSION = 0x01
DEFAULT_LIFETIME = 300

_BASE64_BODY = re.compile(r"[A-Za-z0-9+/]*")
_BASE64URL_PART = re.compile(r"[A-Za-z0-9_-]*")
_JSON_SEPARATORS = (",", ":")


class InvalidAccessKey(ValueError):
    """An access key that is malformed: bad encoding, length, version byte or checksum."""


class InvalidRoomToken(ValueError):
    """A room token that is malformed, wrongly signed, for an unknown key, or outside its validity window."""


def crc8(data: bytes) -> int:
    """CRC-8 as used by ODIN access keys (poly 0x31, init 0xFF, MSB first, no reflection, no final XOR)."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def generate_access_key() -> str:
    """Create a new random access key (standard base64, no padding, 44 characters)."""
    body = secrets.token_bytes(31)
    raw = bytes([ACCESS_KEY_VERSION]) + body + bytes([crc8(body)])
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _decode_base64_any(text: str) -> bytes:
    """Decode standard or URL-safe base64, with or without padding; raise ValueError on bad input."""
    body = text.strip().rstrip("=").replace("-", "+").replace("_", "/")
    if not _BASE64_BODY.fullmatch(body) or len(body) % 4 == 1:
        raise ValueError("not valid base64")
    padded = body + "=" * (-len(body) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not valid base64") from exc


def parse_access_key(text: str) -> bytes:
    """Decode and validate an access key, returning its 33 raw bytes (raises InvalidAccessKey)."""
    if not isinstance(text, str):
        raise InvalidAccessKey("access key must be a string")
    try:
        raw = _decode_base64_any(text)
    except ValueError:
        raise InvalidAccessKey("access key is not valid base64 (standard or URL-safe)") from None
    if len(raw) != ACCESS_KEY_LENGTH:
        raise InvalidAccessKey(f"access key must decode to {ACCESS_KEY_LENGTH} bytes, got {len(raw)}")
    if raw[0] != ACCESS_KEY_VERSION:
        raise InvalidAccessKey(
            f"unsupported access key version byte 0x{raw[0]:02x} (expected 0x{ACCESS_KEY_VERSION:02x})"
        )
    expected = crc8(raw[1:32])
    if raw[32] != expected:
        raise InvalidAccessKey(
            f"access key checksum mismatch (CRC-8 is 0x{raw[32]:02x}, expected 0x{expected:02x})"
        )
    return raw


def is_valid_access_key(text: str) -> bool:
    """Whether the text is a well-formed access key."""
    try:
        parse_access_key(text)
    except InvalidAccessKey:
        return False
    return True


def _private_key(access_key: str) -> Ed25519PrivateKey:
    """The Ed25519 private key whose seed is bytes 1..32 of the access key."""
    return Ed25519PrivateKey.from_private_bytes(parse_access_key(access_key)[1:])


def public_key(access_key: str) -> bytes:
    """The raw 32-byte Ed25519 public key of an access key."""
    return _private_key(access_key).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_key_b64(access_key: str) -> str:
    """The access key's public key as standard padded base64 (the ``pubKey`` shown to users)."""
    return base64.b64encode(public_key(access_key)).decode("ascii")


def key_id(public_key_raw: bytes) -> str:
    """The key id of a raw public key: base64 of 0x01 followed by SHA-512 folded to 8 bytes by XOR."""
    if len(public_key_raw) != 32:
        raise ValueError(f"Ed25519 public key must be 32 bytes, got {len(public_key_raw)}")
    digest = hashlib.sha512(public_key_raw).digest()
    fold = bytearray(8)
    for i in range(8):
        for j in range(8):
            fold[j] ^= digest[8 * i + j]
    return base64.b64encode(bytes([KEY_ID_VERSION]) + bytes(fold)).decode("ascii")


def _decode_pub_key(pub_key_b64: str) -> bytes:
    """Decode a base64 public key string into 32 raw bytes (raises ValueError)."""
    raw = _decode_base64_any(pub_key_b64)
    if len(raw) != 32:
        raise ValueError(f"Ed25519 public key must be 32 bytes, got {len(raw)}")
    return raw


def key_id_from_pub_key(pub_key_b64: str) -> str:
    """The key id of a base64 ``pubKey`` string."""
    return key_id(_decode_pub_key(pub_key_b64))


def _b64url(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64url_decode(part: str) -> bytes:
    """Strictly decode one unpadded base64url JWS segment (raises InvalidRoomToken)."""
    if not _BASE64URL_PART.fullmatch(part) or len(part) % 4 == 1:
        raise InvalidRoomToken("token segment is not base64url")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidRoomToken("token segment is not base64url") from exc


def _compact_json(value: dict[str, Any]) -> bytes:
    """JSON with compact separators, keys in insertion order."""
    return json.dumps(value, separators=_JSON_SEPARATORS, ensure_ascii=False).encode("utf-8")


def room_token(
    access_key: str, room_id: str, user_id: str, *, lifetime: int = DEFAULT_LIFETIME, now: int | None = None
) -> str:
    """Sign an ODIN room token (compact EdDSA JWS) granting ``user_id`` access to ``room_id``."""
    private = _private_key(access_key)
    raw_public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    nbf = int(time.time()) if now is None else int(now)
    header = {"alg": "EdDSA", "kid": key_id(raw_public)}
    claims = {"rid": room_id, "uid": user_id, "sub": "connect", "exp": nbf + int(lifetime), "nbf": nbf}
    signing_input = f"{_b64url(_compact_json(header))}.{_b64url(_compact_json(claims))}"
    signature = private.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{_b64url(signature)}"


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    """Parse a JSON object from a token segment (raises InvalidRoomToken)."""
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # deep nesting must not escape
        raise InvalidRoomToken(f"token {what} is not valid JSON") from exc
    if not isinstance(value, dict):
        raise InvalidRoomToken(f"token {what} is not a JSON object")
    return value


def _int_claim(claims: dict[str, Any], name: str) -> int:
    """A required integer claim (booleans rejected)."""
    value = claims.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRoomToken(f"token claim {name!r} must be an integer")
    return value


def verify_room_token(token: str, public_keys: dict[str, bytes], *, now: int | None = None) -> dict:
    """Verify a room token as an ODIN server does and return its claims (raises InvalidRoomToken)."""
    if not isinstance(token, str):
        raise InvalidRoomToken("token must be a string")
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidRoomToken("token is not a compact JWS (expected three segments)")
    header_b64, claims_b64, signature_b64 = parts
    header = _json_object(_b64url_decode(header_b64), "header")
    if header.get("alg") != "EdDSA":
        raise InvalidRoomToken(f"unsupported token algorithm {header.get('alg')!r} (expected 'EdDSA')")
    if "crit" in header:
        raise InvalidRoomToken("token header has unsupported critical parameters")
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in public_keys:
        raise InvalidRoomToken(f"token key id {kid!r} is not known")
    try:
        verifier = Ed25519PublicKey.from_public_bytes(public_keys[kid])
    except ValueError as exc:
        raise InvalidRoomToken(f"public key for key id {kid!r} is not a valid Ed25519 key") from exc
    signature = _b64url_decode(signature_b64)
    try:
        verifier.verify(signature, f"{header_b64}.{claims_b64}".encode("ascii"))
    except InvalidSignature:
        raise InvalidRoomToken("token signature is invalid") from None
    claims = _json_object(_b64url_decode(claims_b64), "claims")
    if claims.get("sub") != "connect":
        raise InvalidRoomToken(f"token subject {claims.get('sub')!r} is not 'connect'")
    nbf = _int_claim(claims, "nbf")
    exp = _int_claim(claims, "exp")
    current = int(time.time()) if now is None else int(now)
    if current < nbf:
        raise InvalidRoomToken("token is not yet valid")
    if current >= exp:
        raise InvalidRoomToken("token has expired")
    return claims


def jwk(pub_key_b64: str) -> dict:
    """The JSON Web Key (OKP/Ed25519) for a base64 ``pubKey``, with its ODIN key id as ``kid``."""
    raw = _decode_pub_key(pub_key_b64)
    return {
        "kid": key_id(raw),
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64url(raw),
        "alg": "EdDSA",
        "use": "sig",
    }


def public_key_from_jwk(jwk: dict) -> bytes:
    """The raw 32-byte public key of an OKP/Ed25519 JWK (raises ValueError)."""
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ValueError("JWK is not an OKP Ed25519 key")
    x = jwk.get("x")
    if not isinstance(x, str) or not _BASE64URL_PART.fullmatch(x):
        raise ValueError("JWK 'x' is not base64url")
    try:
        raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("JWK 'x' is not base64url") from exc
    if len(raw) != 32:
        raise ValueError(f"JWK 'x' must decode to 32 bytes, got {len(raw)}")
    return raw
