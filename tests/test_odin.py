"""ODIN access keys and room tokens: the odin-tokens test vector, CRC-8 validation, signing and verification."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cortex.lib import odin

ACCESS_KEY = "AcIbjUrHA8EV62TAGYcwDtHhQ8wN3lXmcKtFtN/SvdMA"
PUB_KEY = "ZGYe/vBZVNkzQ6fD8BmkJUb6o0p8wfKt3PqFVx6+be4="
KEY_ID = "AQ7aVmK+pI1l"
NBF = 32503680000
TOKEN = (
    "eyJhbGciOiJFZERTQSIsImtpZCI6IkFRN2FWbUsrcEkxbCJ9"
    ".eyJyaWQiOiJ0ZXN0LXJvb20iLCJ1aWQiOiJ0ZXN0LXVzZXIiLCJzdWIiOiJjb25uZWN0IiwiZXhwIjozMjUwMzY4MDMwMCwibmJmIjozMjUwMzY4MDAwMH0"
    ".HZHRcFZ-DsdTTWE0gqbG1ZAc1YFb81OiGGwB5MeD2zA87TOKzCCpsxPIfUF4XHBVx50xvZxEM3nsrzMBS1ScCA"
)
CLAIMS = {"rid": "test-room", "uid": "test-user", "sub": "connect", "exp": NBF + 300, "nbf": NBF}


def b64url(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def encode_raw(raw: bytes) -> str:
    """Standard base64 without padding, as access keys are written."""
    return base64.b64encode(raw).decode().rstrip("=")


# --- the odin-tokens vector -------------------------------------------------------------------------


def test_vector_public_key():
    raw = odin.public_key(ACCESS_KEY)
    assert len(raw) == 32
    assert base64.b64encode(raw).decode() == PUB_KEY
    assert odin.public_key_b64(ACCESS_KEY) == PUB_KEY


def test_vector_key_id():
    assert odin.key_id(odin.public_key(ACCESS_KEY)) == KEY_ID
    assert odin.key_id_from_pub_key(PUB_KEY) == KEY_ID
    assert len(base64.b64decode(KEY_ID)) == 9


def test_vector_token_exact():
    assert odin.room_token(ACCESS_KEY, "test-room", "test-user", now=NBF) == TOKEN


def test_vector_token_structure():
    header_b64, claims_b64, sig_b64 = TOKEN.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    assert base64.urlsafe_b64decode(pad(header_b64)) == b'{"alg":"EdDSA","kid":"AQ7aVmK+pI1l"}'
    claims = json.loads(base64.urlsafe_b64decode(pad(claims_b64)))
    assert list(claims) == ["rid", "uid", "sub", "exp", "nbf"]
    assert claims == CLAIMS
    assert "=" not in TOKEN
    assert len(base64.urlsafe_b64decode(pad(sig_b64))) == 64


def test_vector_token_verifies():
    keys = {KEY_ID: odin.public_key(ACCESS_KEY)}
    assert odin.verify_room_token(TOKEN, keys, now=NBF) == CLAIMS


def test_vector_token_verifies_with_pyjwt():
    raw = base64.b64decode(PUB_KEY)
    decoded = jwt.decode(
        TOKEN,
        key=Ed25519PublicKey.from_public_bytes(raw),
        algorithms=["EdDSA"],
        options={"verify_exp": False, "verify_nbf": False},
    )
    assert decoded == CLAIMS
    assert jwt.get_unverified_header(TOKEN) == {"alg": "EdDSA", "kid": KEY_ID}


def test_lifetime_and_default_now():
    token = odin.room_token(ACCESS_KEY, "r", "u", lifetime=60, now=1000)
    claims = odin.verify_room_token(token, {KEY_ID: odin.public_key(ACCESS_KEY)}, now=1000)
    assert claims["exp"] - claims["nbf"] == 60
    assert "iat" not in claims
    fresh = odin.verify_room_token(
        odin.room_token(ACCESS_KEY, "r", "u"), {KEY_ID: odin.public_key(ACCESS_KEY)}
    )
    assert fresh["exp"] - fresh["nbf"] == 300


# --- CRC-8 and access key parsing -------------------------------------------------------------------


def test_crc8_known_values():
    assert odin.crc8(b"") == 0xFF
    # CRC-8/NRSC-5 (poly 0x31, init 0xFF, no reflection, no xorout) check value
    assert odin.crc8(b"123456789") == 0xF7
    raw = base64.b64decode(ACCESS_KEY + "=")
    assert odin.crc8(raw[1:32]) == raw[32]


def test_generated_keys_always_parse():
    for _ in range(200):
        key = odin.generate_access_key()
        assert len(key) == 44
        assert "=" not in key
        raw = odin.parse_access_key(key)
        assert len(raw) == 33 and raw[0] == 0x01
        assert odin.is_valid_access_key(key)


def test_generated_keys_differ():
    assert len({odin.generate_access_key() for _ in range(50)}) == 50


@pytest.mark.parametrize("byte_index", range(1, 33))
def test_any_bit_flip_fails_checksum(byte_index):
    raw = bytearray(odin.parse_access_key(ACCESS_KEY))
    for bit in range(8):
        flipped = bytearray(raw)
        flipped[byte_index] ^= 1 << bit
        text = encode_raw(bytes(flipped))
        with pytest.raises(odin.InvalidAccessKey, match="checksum"):
            odin.parse_access_key(text)
        assert not odin.is_valid_access_key(text)


def test_bit_flips_in_generated_keys_fail():
    for _ in range(20):
        raw = bytearray(odin.parse_access_key(odin.generate_access_key()))
        for byte_index in range(1, 33):
            for bit in range(8):
                flipped = bytearray(raw)
                flipped[byte_index] ^= 1 << bit
                assert not odin.is_valid_access_key(encode_raw(bytes(flipped)))


@pytest.mark.parametrize("version", [0x00, 0x02, 0xFF])
def test_wrong_version_byte(version):
    raw = bytearray(odin.parse_access_key(ACCESS_KEY))
    raw[0] = version
    with pytest.raises(odin.InvalidAccessKey, match="version"):
        odin.parse_access_key(encode_raw(bytes(raw)))


@pytest.mark.parametrize("length", [0, 1, 32, 34, 64])
def test_wrong_length(length):
    raw = bytes([0x01]) + bytes(range(1, length)) if length else b""
    text = encode_raw(raw[:length])
    with pytest.raises(odin.InvalidAccessKey, match="33 bytes"):
        odin.parse_access_key(text)


def test_truncated_key_is_rejected():
    with pytest.raises(odin.InvalidAccessKey):
        odin.parse_access_key(ACCESS_KEY[:-1])
    with pytest.raises(odin.InvalidAccessKey):
        odin.parse_access_key(ACCESS_KEY[:-4])


@pytest.mark.parametrize(
    "text",
    [
        "not a key at all!",
        "AcIbjUrHA8EV62TAGYcwDtHhQ8wN3lXmcKtFtN/SvdM*",
        "AcIbjUrHA8EV62TAGYcwDtHh Q8wN3lXmcKtFtN/SvdM",
        "====",
        "A",
        "Ac=IbjUrHA8EV62TAGYcwDtHhQ8wN3lXmcKtFtN/SvdMA",
        "€" * 44,
    ],
)
def test_garbage_text(text):
    with pytest.raises(odin.InvalidAccessKey, match="base64|33 bytes"):
        odin.parse_access_key(text)
    assert not odin.is_valid_access_key(text)


def test_non_string_is_rejected():
    assert not odin.is_valid_access_key(None)  # type: ignore[arg-type]
    assert not odin.is_valid_access_key(b"AcIb")  # type: ignore[arg-type]


def test_invalid_access_key_is_value_error():
    assert issubclass(odin.InvalidAccessKey, ValueError)
    with pytest.raises(ValueError):
        odin.public_key("garbage")


def test_url_safe_and_padded_forms_parse_the_same():
    expected = base64.b64decode(ACCESS_KEY + "=")
    url_safe = ACCESS_KEY.replace("+", "-").replace("/", "_")
    assert url_safe != ACCESS_KEY
    for text in (ACCESS_KEY, ACCESS_KEY + "=", url_safe, url_safe + "="):
        assert odin.parse_access_key(text) == expected
    assert odin.public_key_b64(url_safe) == PUB_KEY
    assert odin.room_token(url_safe, "test-room", "test-user", now=NBF) == TOKEN


# --- round trip and verification failures -----------------------------------------------------------


@pytest.fixture
def fresh_key():
    key = odin.generate_access_key()
    raw = odin.public_key(key)
    return key, {odin.key_id(raw): raw}


def test_round_trip(fresh_key):
    key, keys = fresh_key
    token = odin.room_token(key, "lobby", "alice", now=5000)
    claims = odin.verify_room_token(token, keys, now=5000)
    assert claims == {"rid": "lobby", "uid": "alice", "sub": "connect", "exp": 5300, "nbf": 5000}
    assert odin.verify_room_token(token, keys, now=5299)["uid"] == "alice"


def test_round_trip_non_ascii_ids(fresh_key):
    key, keys = fresh_key
    token = odin.room_token(key, "räum 🎧", "ユーザー", now=10)
    claims = odin.verify_room_token(token, keys, now=10)
    assert (claims["rid"], claims["uid"]) == ("räum 🎧", "ユーザー")


def test_expired_token(fresh_key):
    key, keys = fresh_key
    token = odin.room_token(key, "lobby", "alice", now=5000)
    with pytest.raises(odin.InvalidRoomToken, match="expired"):
        odin.verify_room_token(token, keys, now=5300)
    with pytest.raises(odin.InvalidRoomToken, match="expired"):
        odin.verify_room_token(token, keys, now=10**9)


def test_not_yet_valid_token(fresh_key):
    key, keys = fresh_key
    token = odin.room_token(key, "lobby", "alice", now=5000)
    with pytest.raises(odin.InvalidRoomToken, match="not yet valid"):
        odin.verify_room_token(token, keys, now=4999)


def test_tampered_claim(fresh_key):
    key, keys = fresh_key
    header_b64, _, sig_b64 = odin.room_token(key, "lobby", "alice", now=5000).split(".")
    forged = {"rid": "lobby", "uid": "mallory", "sub": "connect", "exp": 5300, "nbf": 5000}
    token = ".".join([header_b64, b64url(json.dumps(forged, separators=(",", ":")).encode()), sig_b64])
    with pytest.raises(odin.InvalidRoomToken, match="signature"):
        odin.verify_room_token(token, keys, now=5000)


def test_tampered_signature(fresh_key):
    key, keys = fresh_key
    token = odin.room_token(key, "lobby", "alice", now=5000)
    header_b64, claims_b64, sig_b64 = token.split(".")
    sig = bytearray(base64.urlsafe_b64decode(sig_b64 + "=="))
    sig[0] ^= 1
    with pytest.raises(odin.InvalidRoomToken, match="signature"):
        odin.verify_room_token(f"{header_b64}.{claims_b64}.{b64url(bytes(sig))}", keys, now=5000)


def test_unknown_kid(fresh_key):
    key, _ = fresh_key
    token = odin.room_token(key, "lobby", "alice", now=5000)
    with pytest.raises(odin.InvalidRoomToken, match="not known"):
        odin.verify_room_token(token, {KEY_ID: odin.public_key(ACCESS_KEY)}, now=5000)
    with pytest.raises(odin.InvalidRoomToken, match="not known"):
        odin.verify_room_token(token, {}, now=5000)


def test_signed_by_another_key(fresh_key):
    key, keys = fresh_key
    (kid,) = keys
    other = odin.generate_access_key()
    token = odin.room_token(other, "lobby", "alice", now=5000)
    _, claims_b64, sig_b64 = token.split(".")
    header = b64url(json.dumps({"alg": "EdDSA", "kid": kid}, separators=(",", ":")).encode())
    with pytest.raises(odin.InvalidRoomToken, match="signature"):
        odin.verify_room_token(f"{header}.{claims_b64}.{sig_b64}", keys, now=5000)


def test_wrong_algorithm_and_subject(fresh_key):
    key, keys = fresh_key
    (kid,) = keys
    header = b64url(json.dumps({"alg": "none", "kid": kid}).encode())
    claims_b64 = odin.room_token(key, "lobby", "alice", now=5000).split(".")[1]
    with pytest.raises(odin.InvalidRoomToken, match="algorithm"):
        odin.verify_room_token(f"{header}.{claims_b64}.", keys, now=5000)

    # A correctly signed token whose subject is not "connect" is still rejected.
    private = Ed25519PrivateKey.from_private_bytes(odin.parse_access_key(key)[1:])
    good_header = b64url(json.dumps({"alg": "EdDSA", "kid": kid}).encode())
    claims = b64url(json.dumps({"rid": "r", "uid": "u", "sub": "other", "exp": 5300, "nbf": 5000}).encode())
    signature = b64url(private.sign(f"{good_header}.{claims}".encode()))
    with pytest.raises(odin.InvalidRoomToken, match="subject"):
        odin.verify_room_token(f"{good_header}.{claims}.{signature}", keys, now=5000)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!!.e30.AA", "e30.e30.AA", "W10.e30.AA"])
def test_malformed_tokens(token):
    with pytest.raises(odin.InvalidRoomToken):
        odin.verify_room_token(token, {KEY_ID: odin.public_key(ACCESS_KEY)}, now=NBF)


# --- JWK --------------------------------------------------------------------------------------------


def test_jwk_of_vector():
    raw = base64.b64decode(PUB_KEY)
    key = odin.jwk(PUB_KEY)
    assert key == {
        "kid": KEY_ID,
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(raw),
        "alg": "EdDSA",
        "use": "sig",
    }
    assert "=" not in key["x"]
    assert odin.public_key_from_jwk(key) == raw


def test_jwk_round_trip_for_generated_keys():
    for _ in range(10):
        pub = odin.public_key_b64(odin.generate_access_key())
        key = odin.jwk(pub)
        raw = odin.public_key_from_jwk(key)
        assert base64.b64encode(raw).decode() == pub
        assert key["kid"] == odin.key_id(raw)


def test_jwk_verifies_vector_token():
    key = odin.jwk(PUB_KEY)
    assert odin.verify_room_token(TOKEN, {key["kid"]: odin.public_key_from_jwk(key)}, now=NBF) == CLAIMS
    # PyJWT reads the same JWK independently.
    assert (
        jwt.decode(
            TOKEN,
            key=jwt.PyJWK(key),
            algorithms=["EdDSA"],
            options={"verify_exp": False, "verify_nbf": False},
        )
        == CLAIMS
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"kty": "EC", "crv": "Ed25519", "x": "AA"},
        {"kty": "OKP", "crv": "X25519", "x": b64url(bytes(32))},
        {"kty": "OKP", "crv": "Ed25519"},
        {"kty": "OKP", "crv": "Ed25519", "x": b64url(bytes(31))},
        {"kty": "OKP", "crv": "Ed25519", "x": "not/base64url+"},
    ],
)
def test_public_key_from_bad_jwk(bad):
    with pytest.raises(ValueError):
        odin.public_key_from_jwk(bad)


def test_deeply_nested_token_header_is_rejected_not_crashing():
    import base64

    header = base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).rstrip(b"=").decode()
    with pytest.raises(odin.InvalidRoomToken):
        odin.verify_room_token(f"{header}.e30.AAAA", {})
