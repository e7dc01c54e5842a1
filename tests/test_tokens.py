"""UAA token verification (pcapd.tokens): pure and synchronous, tokens signed right here.

Every token is made with ``cryptography`` RSA keys and PyJWT (forgeries by hand), independent
of the fake UAA. Every refusal is checked to be an :class:`Unauthenticated` whose message holds
no piece of the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcapd.tokens import (
    Identity,
    InvalidKeySet,
    Unauthenticated,
    UnknownSigningKey,
    bearer_token,
    parse_jwks,
    same_issuer,
    unverified_header,
    verify,
)

UAA = "https://uaa.sys.example.com"
ISSUER = UAA + "/oauth/token"
NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC

KEY1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEY2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EVIL = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEYS = {"key-1": KEY1.public_key(), "key-2": KEY2.public_key()}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(document: Any) -> str:
    return b64(json.dumps(document).encode())


def user_claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "jti": "4daf1cfb86b34d0ebc397caf4e07c6c0",
        "sub": "1b754c54-db37-44b3-9f52-fef0c3b94842",
        "scope": ["openid", "cloud_controller.read", "cloud_controller.write", "uaa.user"],
        "client_id": "cf", "cid": "cf", "azp": "cf", "grant_type": "password",
        "user_id": "1b754c54-db37-44b3-9f52-fef0c3b94842", "origin": "uaa",
        "user_name": "alice", "email": "alice@example.com", "auth_time": int(NOW),
        "rev_sig": "d6b71e50", "iat": int(NOW), "exp": int(NOW) + 7200, "iss": ISSUER,
        "zid": "uaa", "aud": ["cloud_controller", "cf", "uaa", "openid"],
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def client_claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "jti": "c0ffee", "sub": "pcap-ops", "authorities": ["bosh.admin", "uaa.none"],
        "client_id": "pcap-ops", "cid": "pcap-ops", "azp": "pcap-ops",
        "grant_type": "client_credentials", "iat": int(NOW), "exp": int(NOW) + 600,
        "iss": ISSUER, "zid": "uaa", "aud": ["bosh", "pcap-ops"],
    }
    claims.update(changes)
    return claims


def sign(claims: dict[str, Any], key: rsa.RSAPrivateKey = KEY1, kid: str | None = "key-1",
         **header: Any) -> str:
    headers: dict[str, Any] = {"jku": UAA + "/token_keys", **header}
    if kid is not None:
        headers["kid"] = kid
    # PyJWS, not jwt.encode: the claims go out as given (jwt.encode refuses a non-text iss).
    payload = json.dumps(claims).encode()
    return jwt.api_jws.encode(payload, key, algorithm="RS256", headers=headers)


def check(token: str, **kwargs: Any) -> Identity:
    kwargs.setdefault("issuer", ISSUER)
    kwargs.setdefault("now", NOW)
    return verify(token, KEYS, **kwargs)


def refused(token: str, **kwargs: Any) -> str:
    """The message of the refusal of ``token``, checked to hold no piece of the token."""
    with pytest.raises(Unauthenticated) as info:
        check(token, **kwargs)
    message = str(info.value)
    assert_no_token_in(message, token)
    assert info.value.code == "UNAUTHENTICATED"
    return message


def assert_no_token_in(message: str, token: str) -> None:
    """No piece of 8 or more characters (shorter ones may be words of the message)."""
    for part in [token, *token.split(".")]:
        if len(part) >= 8:
            assert part not in message, f"a piece of the token in {message!r}"


# --- valid tokens ---------------------------------------------------------------------------

def test_a_uaa_user_token_gives_its_identity() -> None:
    identity = check(sign(user_claims()))
    assert identity == Identity(
        user_id="1b754c54-db37-44b3-9f52-fef0c3b94842", user_name="alice", client_id="cf",
        scopes=frozenset({"openid", "cloud_controller.read", "cloud_controller.write",
                          "uaa.user"}),
        expires_at=NOW + 7200, issuer=ISSUER, origin="uaa", is_client=False)


def test_a_client_credentials_token_is_a_client_with_its_authorities() -> None:
    identity = check(sign(client_claims()))
    assert identity.is_client
    assert identity.user_id == identity.user_name == identity.client_id == "pcap-ops"
    assert identity.scopes == {"bosh.admin", "uaa.none"}
    assert identity.origin is None


def test_scope_wins_over_authorities_and_may_be_a_space_separated_string() -> None:
    identity = check(sign(client_claims(scope="bosh.read openid")))
    assert identity.scopes == {"bosh.read", "openid"}


def test_a_user_token_without_user_name_uses_the_user_id() -> None:
    identity = check(sign(user_claims(user_name=None)))
    assert identity.user_name == identity.user_id


def test_the_second_key_of_a_rotation_verifies_too() -> None:
    assert check(sign(user_claims(), KEY2, "key-2")).user_name == "alice"


def test_the_issuer_matches_with_an_explicit_default_port_and_another_host_case() -> None:
    assert check(sign(user_claims(iss="https://UAA.sys.example.com:443/oauth/token")))
    assert check(sign(user_claims()), issuer="https://uaa.sys.example.com:443/oauth/token")


def test_bosh_uaa_tokens_with_an_ip_and_port_issuer() -> None:
    issuer = "https://10.0.0.6:8443/oauth/token"
    token = sign(user_claims(iss=issuer, client_id="bosh_cli", scope=["openid", "bosh.admin"]),
                 kid="key-1")
    identity = check(token, issuer=issuer)
    assert identity.client_id == "bosh_cli"
    assert "bosh.admin" in identity.scopes


def test_identity_repr_names_the_user_and_holds_no_token() -> None:
    token = sign(user_claims())
    text = repr(check(token))
    assert "alice" in text and "cloud_controller.read" in text
    assert_no_token_in(text, token)


# --- lifetime -------------------------------------------------------------------------------

def test_an_expired_token_is_refused_with_the_time_it_expired() -> None:
    message = refused(sign(user_claims(exp=int(NOW) - 60)))
    assert message == ("the token expired at 22:12:20 UTC: log in again "
                       "(cf login / bosh log-in)")


def test_a_token_that_expired_on_another_day_shows_the_date() -> None:
    message = refused(sign(user_claims(exp=int(NOW) - 86400, iat=int(NOW) - 90000)))
    assert "expired at 2023-11-13 22:13:20 UTC" in message


def test_an_expired_token_within_the_leeway_is_accepted() -> None:
    token = sign(user_claims(exp=int(NOW) - 20))
    assert check(token).user_name == "alice"
    assert check(token, leeway=30).user_name == "alice"
    refused(token, leeway=10)
    refused(token, leeway=20)  # exp <= now - leeway: expired, as PyJWT counts


def test_not_before_in_the_future_is_refused_and_within_the_leeway_accepted() -> None:
    assert "not valid before 22:18:20 UTC" in refused(sign(user_claims(nbf=int(NOW) + 300)))
    assert check(sign(user_claims(nbf=int(NOW) + 20))).user_name == "alice"


def test_issued_in_the_future_is_refused() -> None:
    assert "issued in the future" in refused(sign(user_claims(iat=int(NOW) + 300)))
    assert check(sign(user_claims(iat=int(NOW) + 25))).user_name == "alice"


@pytest.mark.parametrize("claim", ["exp", "iat", "iss"])
def test_a_missing_required_claim_is_refused(claim: str) -> None:
    assert refused(sign(user_claims(**{claim: None}))) == \
        f"malformed token: the {claim} claim is missing"


@pytest.mark.parametrize("value", ["soon", True, [1], {"a": 1}, float("inf")])
def test_a_time_that_is_not_a_number_is_refused(value: Any) -> None:
    assert "malformed token: its exp claim" in refused(sign(user_claims(exp=value)))


# --- issuer ---------------------------------------------------------------------------------

@pytest.mark.parametrize("iss", [
    "https://uaa.sys.example.com.evil.net/oauth/token",  # prefix attack on the host
    "https://uaa.sys.example.com:8443/oauth/token",  # another port
    "http://uaa.sys.example.com/oauth/token",  # another scheme
    "https://uaa.sys.example.com/oauth/token/evil",  # a longer path
    "https://uaa.sys.example.com/oauth/tokens",
    "https://uaa.sys.example.com",
    "https://evil.example/oauth/token",
    "https://uaa.sys.example.com@evil.example/oauth/token",
    "https://uaa.other.example.com/oauth/token",
])
def test_a_token_of_another_issuer_is_refused(iss: str) -> None:
    message = refused(sign(user_claims(iss=iss)))
    assert message == (f"the token was issued by {iss}, not by this platform's UAA {ISSUER}: "
                       "log in to this platform")


def test_an_issuer_in_the_message_is_cut_short_and_printable() -> None:
    message = refused(sign(user_claims(iss="https://evil.example/\x1b[31m" + "a" * 500)))
    assert "\x1b" not in message and len(message) < 300


@pytest.mark.parametrize(("a", "b", "same"), [
    ("https://uaa.example.com/oauth/token", "https://uaa.example.com/oauth/token", True),
    ("https://uaa.example.com/oauth/token", "https://uaa.example.com:443/oauth/token", True),
    ("http://uaa.example.com/oauth/token", "http://uaa.example.com:80/oauth/token", True),
    ("https://UAA.Example.com/oauth/token", "HTTPS://uaa.example.COM/oauth/token", True),
    ("https://10.0.0.6:8443/oauth/token", "https://10.0.0.6:8443/oauth/token", True),
    ("https://[::1]:8443/oauth/token", "https://[::1]:8443/oauth/token", True),
    ("https://uaa.example.com/oauth/token", "https://uaa.example.com.evil.net/oauth/token",
     False),
    ("https://uaa.example.com/oauth/token", "https://uaa.example.com:8443/oauth/token", False),
    ("https://uaa.example.com/oauth/token", "http://uaa.example.com/oauth/token", False),
    ("https://uaa.example.com:443/oauth/token", "http://uaa.example.com:443/oauth/token", False),
    ("https://uaa.example.com/oauth/token", "https://uaa.example.com/oauth/token/x", False),
    ("https://uaa.example.com/oauth/token", "https://uaa.example.com/OAUTH/token", False),
    ("https://uaa.example.com/oauth/token", "https://uaa.example.com/oauth/token?x=1", False),
    ("https://uaa.example.com/oauth/token", "https://x@uaa.example.com/oauth/token", False),
    ("https://uaa.example.com/oauth/token", "https://uaa.example.com:99999/oauth/token", False),
    ("https://uaa.example.com/oauth/token", "https://uaa.example.com:x/oauth/token", False),
    ("https://uaa.example.com/oauth/token", "uaa.example.com/oauth/token", False),
    ("ftp://uaa.example.com/oauth/token", "ftp://uaa.example.com/oauth/token", False),
    ("", "", False),
])
def test_same_issuer_compares_scheme_host_port_and_path_exactly(a: str, b: str,
                                                                same: bool) -> None:
    assert same_issuer(a, b) is same
    assert same_issuer(b, a) is same


# --- algorithms and keys --------------------------------------------------------------------

def forged(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return f"{b64json(header)}.{b64json(claims)}.{b64(signature)}"


def test_alg_none_is_refused_before_any_key_lookup() -> None:
    token = forged({"alg": "none", "typ": "JWT", "kid": "key-1"}, user_claims())
    assert refused(token) == "unsupported signing algorithm none: only RS256"
    with pytest.raises(Unauthenticated, match="algorithm none"):
        verify(token, {}, issuer=ISSUER, now=NOW)  # not "unknown signing key"


@pytest.mark.parametrize("alg", ["None", "NONE", "HS256", "RS512", "PS256", "ES256", ""])
def test_other_algorithms_are_refused(alg: str) -> None:
    token = forged({"alg": alg, "kid": "key-1"}, user_claims(), b"x" * 32)
    assert refused(token).startswith("unsupported signing algorithm")


def test_hmac_signed_with_the_public_key_pem_is_refused() -> None:
    """Key confusion: a verifier that let the token pick HMAC would use the public PEM as the
    shared secret, which anyone can read from /token_keys."""
    pem = KEY1.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64json({'alg': 'HS256', 'kid': 'key-1'})}.{b64json(user_claims())}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64(signature)}"
    assert refused(token) == "unsupported signing algorithm HS256: only RS256"


def test_an_algorithm_name_that_is_not_a_plain_name_is_not_repeated() -> None:
    token = forged({"alg": "RS256\n" + "x" * 200, "kid": "key-1"}, user_claims())
    assert refused(token) == "unsupported signing algorithm: only RS256"


def test_an_unknown_key_id_is_refused_naming_the_key() -> None:
    token = sign(user_claims(), EVIL, "k9")
    with pytest.raises(UnknownSigningKey) as info:
        check(token)
    assert info.value.kid == "k9"
    assert str(info.value).startswith("unknown signing key 'k9'")
    assert_no_token_in(str(info.value), token)


def test_a_token_without_a_key_id_is_refused() -> None:
    assert refused(sign(user_claims(), kid=None)) == \
        "malformed token: no key id (kid) in its header"


def test_a_known_key_id_with_another_key_is_a_signature_mismatch() -> None:
    message = refused(sign(user_claims(), EVIL, "key-1"))
    assert message.startswith("the token's signature does not match")


def test_a_tampered_payload_is_a_signature_mismatch() -> None:
    header, _, signature = sign(user_claims()).split(".")
    wider = b64json(user_claims(scope=["bosh.admin", "cloud_controller.admin"]))
    message = refused(f"{header}.{wider}.{signature}")
    assert message.startswith("the token's signature does not match")


def test_a_token_signed_with_the_jku_of_the_token_is_not_trusted() -> None:
    """jku is ignored: only the keys the caller passes verify."""
    token = sign(user_claims(), EVIL, "key-1", jku="https://evil.example/token_keys")
    refused(token)


def test_a_refresh_token_is_refused() -> None:
    token = sign(user_claims(jti="4daf1cfb86b34d0ebc397caf4e07c6c0-r"))
    assert refused(token).startswith("a refresh token is not an access token")


@pytest.mark.parametrize("token", [
    "", "abc", "a.b", "a.b.c", "...", "eyJ.eyJ.", "Bearer x", "ééé.ééé.ééé",
    b64json({"alg": "RS256", "kid": "key-1"}) + "." + b64(b"not json") + ".AAAA",
    b64json({"alg": "RS256", "kid": "key-1"}) + "." + b64json([1, 2]) + ".AAAA",
    b64json(["alg"]) + "." + b64json({}) + ".AAAA",
    b64(b"\xff\xfe") + ".e30.AAAA",
    "x" * 100_000,
])
def test_malformed_tokens_are_refused(token: str) -> None:
    assert refused(token).startswith(("malformed token", "unsupported signing algorithm",
                                      "the token's signature"))


@pytest.mark.parametrize("changes", [
    {"sub": 5}, {"jti": 7}, {"user_name": ["a"]}, {"scope": [1, 2]}, {"scope": {"a": 1}},
    {"origin": 3}, {"iss": 42},
])
def test_claims_of_the_wrong_type_are_refused(changes: dict[str, Any]) -> None:
    assert refused(sign(user_claims(**changes))).startswith("malformed token")


def test_a_client_token_without_any_client_id_is_refused() -> None:
    claims = client_claims()
    for name in ("sub", "client_id", "cid", "azp"):
        del claims[name]
    assert refused(sign(claims)).startswith("malformed token: neither a user")


@given(st.text(max_size=300))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_text_is_only_ever_refused(text: str) -> None:
    try:
        check(text)
    except Unauthenticated as exc:
        assert_no_token_in(str(exc), text)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
CLAIM_NAMES = st.sampled_from(["exp", "iat", "nbf", "iss", "sub", "jti", "scope", "user_id",
                               "user_name", "client_id", "cid", "azp", "origin",
                               "authorities", "aud"])


@given(st.dictionaries(CLAIM_NAMES, JSON | st.integers(int(NOW) - 100, int(NOW) + 100)),
       st.booleans())
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_arbitrary_claims_signed_by_the_uaa_verify_or_are_refused(
        changes: dict[str, Any], client: bool) -> None:
    claims = (client_claims if client else user_claims)()
    claims.update(changes)
    token = sign(claims)
    try:
        identity = check(token)
    except Unauthenticated as exc:
        assert_no_token_in(str(exc), token)
    else:
        assert identity.expires_at > NOW - 30
        assert same_issuer(identity.issuer, ISSUER)


def test_headers_are_checked_without_verification() -> None:
    header = unverified_header(sign(user_claims(), kid="key-2"))
    assert header["alg"] == "RS256" and header["kid"] == "key-2"


# --- bearer tokens --------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["Bearer eyJ.a.b", "bearer eyJ.a.b", "BEARER eyJ.a.b"])
def test_bearer_token_takes_the_token(value: str) -> None:
    assert bearer_token(value) == "eyJ.a.b"


@pytest.mark.parametrize("value", [None, "", "Bearer", "Bearer ", "Bearer  eyJ", "Bearer eyJ ",
                                   "Bearer a b", "Basic Y2Y6", "eyJ.a.b", "Bearer\teyJ",
                                   "Bearer a, Bearer b"])
def test_bearer_token_refuses_anything_else(value: str | None) -> None:
    with pytest.raises(Unauthenticated) as info:
        bearer_token(value)
    assert str(info.value).startswith("no bearer token: log in first")
    if value and len(value) >= 8:
        assert value not in str(info.value)


# --- key sets -------------------------------------------------------------------------------

def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def jwk(key: rsa.RSAPrivateKey, key_id: str, **changes: Any) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    entry: dict[str, Any] = {
        "kty": "RSA", "alg": "RS256", "use": "sig", "kid": key_id, "value": pem(key),
        "n": b64(numbers.n.to_bytes(256, "big")), "e": b64(numbers.e.to_bytes(3, "big"))}
    for name, value in changes.items():
        if value is None:
            entry.pop(name, None)
        else:
            entry[name] = value
    return entry


def same_key(a: rsa.RSAPublicKey, b: rsa.RSAPublicKey) -> bool:
    return a.public_numbers() == b.public_numbers()


def test_parse_jwks_reads_a_uaa_key_set_with_two_keys() -> None:
    document = json.dumps({"keys": [jwk(KEY1, "key-1"), jwk(KEY2, "key-2")]}).encode()
    keys = parse_jwks(document)
    assert sorted(keys) == ["key-1", "key-2"]
    assert same_key(keys["key-1"], KEY1.public_key())
    assert same_key(keys["key-2"], KEY2.public_key())
    assert check(sign(user_claims(), KEY2, "key-2")) == verify(
        sign(user_claims(), KEY2, "key-2"), keys, issuer=ISSUER, now=NOW)


def test_parse_jwks_reads_the_pem_value_when_n_and_e_are_missing_or_empty() -> None:
    """pcap-release's mock sends ``"n": ""`` and a PEM value."""
    for entry in (jwk(KEY1, "k", n="", e="AQAB"), jwk(KEY1, "k", n=None, e=None)):
        assert same_key(parse_jwks({"keys": [entry]})["k"], KEY1.public_key())


def test_parse_jwks_reads_n_and_e_without_a_pem_value() -> None:
    keys = parse_jwks(json.dumps({"keys": [jwk(KEY1, "k", value=None, alg=None, use=None)]}))
    assert same_key(keys["k"], KEY1.public_key())


def test_parse_jwks_skips_keys_that_are_not_rs256_signing_keys() -> None:
    document = {"keys": [
        {"kty": "MAC", "alg": "HS256", "kid": "legacy", "value": "s3cr3t"},
        {"kty": "EC", "alg": "ES256", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
        jwk(KEY1, "rs512", alg="RS512"),
        jwk(KEY1, "enc", use="enc"),
        jwk(KEY1, ""),
        jwk(KEY1, "nokid", kid=None),
        jwk(KEY2, "key-2"),
    ]}
    assert list(parse_jwks(document)) == ["key-2"]


@pytest.mark.parametrize(("document", "message"), [
    (b"<html>", "the key set is not JSON"),
    (b"[]", "the key set has no 'keys' list"),
    ({"keys": {"kid": "a"}}, "the key set has no 'keys' list"),
    ({"keys": ["a"]}, "key #0 is not an object"),
    ({"keys": [jwk(KEY1, "a"), jwk(KEY2, "a")]}, "key 'a' is listed twice"),
    ({"keys": [jwk(KEY1, "a", n="!!!!")]}, "key 'a': n is not base64url"),
    ({"keys": [jwk(KEY1, "a", n=5)]}, "key 'a': n is not base64url text"),
    ({"keys": [jwk(KEY1, "a", e="AA")]}, "key 'a': n/e are not an RSA public key"),
    ({"keys": [jwk(KEY1, "a", n=None, value=None)]}, "key 'a' has neither n/e nor a PEM value"),
    ({"keys": [jwk(KEY1, "a", n=None, value="-----BEGIN PUBLIC KEY-----\nAAAA\n"
                                             "-----END PUBLIC KEY-----\n")]},
     "key 'a': its value is not a PEM public key"),
    ({"keys": [jwk(KEY1, "a", n=None, value=pem(ec.generate_private_key(ec.SECP256R1())))]},
     "key 'a': its value is not an RSA key"),
])
def test_parse_jwks_refuses_unusable_documents(document: Any, message: str) -> None:
    with pytest.raises(InvalidKeySet) as info:
        parse_jwks(document)
    assert str(info.value) == message


def test_parse_jwks_refuses_short_rsa_keys() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    entry = jwk(small, "small", n=b64(small.public_key().public_numbers().n.to_bytes(128, "big")))
    with pytest.raises(InvalidKeySet, match="key 'small' has 1024 bits: at least 2048"):
        parse_jwks({"keys": [entry]})
