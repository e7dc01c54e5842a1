"""UAA access tokens: who is asking, checked against the UAA's signing keys. Pure: no I/O.

Theory of operation. A user's ``cf`` or ``bosh`` login gives them a UAA access token: a JWT
signed RS256 by the UAA of *that* platform. The api trusts exactly three things about it:

- the **signature**, checked by PyJWT (a maintained library; no hand-written crypto) with the
  public key the token's ``kid`` names, taken from the UAA's ``/token_keys`` — never from the
  token's own ``jku`` header: a token must not choose where its verifying key comes from;
- the **algorithm**, which must be RS256 and is checked *before* any key is looked up, so
  ``alg: none`` and HMAC-with-the-public-key ("key confusion") never reach a verifier;
- the **claims**: the issuer must be this platform's UAA (scheme, host and port compared
  exactly, never by prefix: ``https://uaa.example.com.evil.net`` is another host), the token
  must be inside its lifetime (``exp``/``nbf``/``iat`` with a small leeway for clock skew), and
  it must be an access token (UAA refresh tokens have a ``jti`` ending in ``-r``).

Then the **acceptance rule** of the platform (:class:`Acceptance`), the same for every request
— a capture, a renewal, ``captures list``, a download link: the token must be an *access* token
(RFC 8725 §3.11–3.12: an id token, which carries ``nonce``/``at_hash``/``c_hash`` or a ``typ``
other than JWT, is refused outright), its ``aud`` must name the platform's resource
(``cloud_controller`` / ``bosh``, what the ``cf`` and ``bosh_cli`` clients' tokens carry), its
scopes must include one the platform itself would honour (``cloud_controller.read`` /
``bosh.*``), and its client (``client_id``/``cid``/``azp``) must be one the operator lists —
by default the CLIs' own, ``cf`` and ``bosh_cli``. A token UAA signed for another OAuth client
(``aud: [some-dashboard]``, ``scope: [openid]``) is a valid signature on the wrong thing; so
is one of a dashboard that was granted ``cloud_controller.read``: it acts for the user in
ways the user never asked pcapd for. Operators with other client ids (client-credentials
logins, renamed CLI clients) configure the rule (``cf.tokens``, ``bosh.tokens``); ``*`` in
``clients`` accepts any client, and must be written out.

PyJWT reads the wall clock itself and cannot be handed a ``now``, so it checks only the
signature and the claims' types here; the lifetime is compared to the ``now`` the caller passes,
which keeps this module free of clocks (and the messages able to say *when* a token expired).
Who may capture *what* is decided afterwards (:mod:`pcapd.authz`, and the platform itself,
which checks the same token against its own audience when the api forwards it).

Every refusal is an :class:`Unauthenticated` whose message says what is wrong for a person and
never contains the token or a piece of it (claims copied into a message are cut short and
stripped of control characters first).
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey, RSAPublicNumbers

from pcapd.config.model import ANY_CLIENT
from pcapd.errors import PcapdError
from pcapd.proto.messages import Code

ALGORITHM = "RS256"
MIN_KEY_BITS = 2048
MAX_TOKEN_LENGTH = 32 * 1024
"""UAA tokens are 1–4 KiB (more with many scopes); anything far longer is not one."""
DEFAULT_LEEWAY = 30.0
LOGIN_HINT = "log in again (cf login / bosh log-in)"

_SAFE_NAME = re.compile(r"[A-Za-z0-9._:+/=-]{1,64}")
_DEFAULT_PORTS = {"https": 443, "http": 80}


class Unauthenticated(PcapdError):
    """The token is missing, malformed, forged, expired or from another platform."""

    code: ClassVar[Code] = "UNAUTHENTICATED"


class UnknownSigningKey(Unauthenticated):
    """The token names a key (``kid``) that the key set does not hold (yet: keys rotate)."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        super().__init__(f"unknown signing key {_shown(kid)}: the token was not signed by this "
                         f"platform's UAA, or its key was retired; {LOGIN_HINT}")


class InvalidKeySet(PcapdError):
    """A ``/token_keys`` document that cannot be used (not JSON, no keys list, a broken key)."""


@dataclass(frozen=True)
class Acceptance:
    """Which verified tokens a platform accepts (see the module docstring)."""

    platform: str
    """For messages: ``Cloud Foundry``, ``BOSH``."""
    login: str
    """The command that gets a fitting token: ``cf login``."""
    audiences: frozenset[str]
    """One of these must be in the token's ``aud``."""
    scopes: tuple[str, ...]
    """One of the token's scopes must match one of these (``*`` matches within a scope)."""
    clients: frozenset[str]
    """The token's client (``client_id``/``cid``/``azp``) must be one of these; ``*``
    (``ANY_CLIENT``, never the default: an operator writes it out) accepts any client, the
    audience and scopes still applying. Empty accepts none: a rule fails closed."""
    setting: str = "tokens"
    """The config section that sets this rule, for messages: ``cf.tokens``."""



ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash", "s_hash")
"""Claims only OpenID Connect id tokens carry (OIDC Core §2, §3.1.3.6, §3.3.2.11)."""
ACCESS_TOKEN_TYPES = ("jwt", "at+jwt", "application/at+jwt")


@dataclass(frozen=True, repr=False)
class Identity:
    """Who a verified token speaks for. Holds no token, so it is safe to log and keep."""

    user_id: str
    """``user_id`` (= ``sub``) of a user; the client id for a client-credentials token."""
    user_name: str
    """``user_name`` of a user; the client id for a client-credentials token."""
    client_id: str
    scopes: frozenset[str]
    expires_at: float
    issuer: str
    origin: str | None = None
    """The user's identity provider in UAA (``uaa``, ``ldap``, …); None for clients."""
    is_client: bool = False

    def __repr__(self) -> str:
        kind = "client" if self.is_client else "user"
        return (f"Identity({kind} {self.user_name!r}, user_id={self.user_id!r}, "
                f"client_id={self.client_id!r}, scopes={sorted(self.scopes)!r}, "
                f"expires_at={self.expires_at!r}, issuer={self.issuer!r})")


def bearer_token(authorization_header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if authorization_header is None:
        raise Unauthenticated("no bearer token: log in first")
    scheme, sep, token = authorization_header.partition(" ")
    if not sep or scheme.lower() != "bearer" or not token or token != token.strip() \
            or any(c.isspace() for c in token):
        raise Unauthenticated("no bearer token: log in first (the Authorization header must be "
                              "'Bearer <token>')")
    return token


def unverified_header(token: str) -> dict[str, Any]:
    """The token's JOSE header, checked: ``alg`` RS256 (nothing else, before any key lookup) and
    a ``kid``. The header is not yet authenticated; use it only to pick the key."""
    if not isinstance(token, str):
        raise Unauthenticated("malformed token: not text")
    if not token:
        raise Unauthenticated("malformed token: empty")
    if len(token) > MAX_TOKEN_LENGTH:
        raise Unauthenticated(f"malformed token: longer than {MAX_TOKEN_LENGTH} characters")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Unauthenticated(_MALFORMED) from None
    alg = header.get("alg")
    if alg != ALGORITHM:
        shown = f" {alg}" if isinstance(alg, str) and _SAFE_NAME.fullmatch(alg) else ""
        raise Unauthenticated(f"unsupported signing algorithm{shown}: only {ALGORITHM}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Unauthenticated("malformed token: no key id (kid) in its header")
    return header


def same_issuer(a: str, b: str) -> bool:
    """Whether two issuer URLs name the same issuer: scheme, host (case-insensitive), port
    (default ports made explicit) and path compared exactly — never a prefix match."""
    try:
        pa, pb = urlsplit(a), urlsplit(b)
        port_a = pa.port or _DEFAULT_PORTS.get(pa.scheme.lower())
        port_b = pb.port or _DEFAULT_PORTS.get(pb.scheme.lower())
    except ValueError:  # a port out of range or not a number
        return False
    if not pa.hostname or not pb.hostname or port_a is None or port_b is None:
        return False
    if pa.username is not None or pb.username is not None or pa.password is not None \
            or pb.password is not None:
        return False
    return (pa.scheme.lower() == pb.scheme.lower()
            and pa.hostname.lower() == pb.hostname.lower()
            and port_a == port_b
            and (pa.path or "/") == (pb.path or "/")
            and pa.query == pb.query and pa.fragment == pb.fragment)


def verify(token: str, keys: Mapping[str, RSAPublicKey], *, issuer: str, now: float,
           leeway: float = DEFAULT_LEEWAY, accept: Acceptance | None = None) -> Identity:
    """Verify a UAA access token; the :class:`Identity` it speaks for, or :class:`Unauthenticated`.

    ``keys`` maps key ids to the UAA's public keys (:func:`parse_jwks`); an unknown ``kid``
    raises :class:`UnknownSigningKey` so the caller can refetch the keys once. ``issuer`` is
    ``<uaa url>/oauth/token``; ``now`` is seconds since the epoch; ``leeway`` absorbs clock skew.
    With ``accept`` the token must also pass that platform's acceptance rule.
    """
    header = unverified_header(token)
    kid: str = header["kid"]
    key = keys.get(kid)
    if key is None:
        raise UnknownSigningKey(kid)
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[ALGORITHM],
            options={"verify_signature": True, "require": ["exp", "iat", "iss"],
                     # Lifetime below, against the caller's `now` (PyJWT reads its own clock);
                     # issuer below with same_issuer; audience: see the module docstring.
                     "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                     "verify_iss": False, "verify_aud": False,
                     # sub and jti are checked below (PyJWT does so only from 2.10 on).
                     "verify_sub": False, "verify_jti": False,
                     "enforce_minimum_key_length": True})
    except jwt.InvalidSignatureError:
        raise Unauthenticated("the token's signature does not match: it was altered, or signed "
                              f"by another key; {LOGIN_HINT}") from None
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthenticated(f"malformed token: the {exc.claim} claim is missing") from None
    except jwt.InvalidAlgorithmError:
        raise Unauthenticated(f"unsupported signing algorithm: only {ALGORITHM}") from None
    except jwt.InvalidKeyError:
        raise Unauthenticated(f"the signing key {_shown(kid)} is not a usable RSA key of at "
                              f"least {MIN_KEY_BITS} bits") from None
    except jwt.PyJWTError:
        raise Unauthenticated(_MALFORMED) from None
    if not isinstance(claims, dict):  # pragma: no cover - PyJWT guarantees an object
        raise Unauthenticated(_MALFORMED)
    identity = _check_claims(claims, issuer=issuer, now=now, leeway=leeway)
    if accept is not None:
        typ = header.get("typ", "JWT")
        if any(name in claims for name in ID_TOKEN_CLAIMS) or not isinstance(typ, str) \
                or typ.lower() not in ACCESS_TOKEN_TYPES:
            raise Unauthenticated("an id token is not an access token: pcapd takes the access "
                                  f"token of `{accept.login}` (the CLI sends it for you)")
        check_acceptance(claims, identity, accept)
    return identity


def check_acceptance(claims: Mapping[str, Any], identity: Identity, rule: Acceptance) -> None:
    """:class:`Unauthenticated` unless a verified token's audience, client and scopes are
    what ``rule`` accepts; the message says what the token was for, never the token."""
    aud = claims.get("aud", [])
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise Unauthenticated("malformed token: its aud claim is not a list of text")
    if not rule.audiences & set(audiences):
        raise Unauthenticated(
            f"the token was issued for {_printable(', '.join(audiences)) or 'no audience'}, "
            f"not for {rule.platform} ({', '.join(sorted(rule.audiences))}): log in with "
            f"`{rule.login}` and try again")
    if ANY_CLIENT not in rule.clients and identity.client_id not in rule.clients:
        accepted = ", ".join(sorted(rule.clients)) or "none"
        client = (f"the OAuth client {_shown(identity.client_id)}" if identity.client_id
                  else "no named OAuth client")
        raise Unauthenticated(
            f"the token belongs to {client}, which this api does not accept for "
            f"{rule.platform} (it accepts {accepted}): log in with `{rule.login}`, or ask "
            f"the api's operator to add the client to {rule.setting}.clients")
    if not any(fnmatch.fnmatchcase(scope, pattern) for scope in identity.scopes
               for pattern in rule.scopes):
        raise Unauthenticated(
            f"the token carries none of the scopes {rule.platform} needs here "
            f"({', '.join(rule.scopes)}): log in with `{rule.login}`, or ask your "
            "administrator for the scope")


def parse_jwks(document: bytes | str | Mapping[str, Any]) -> dict[str, RSAPublicKey]:
    """The RS256 signing keys of a UAA ``/token_keys`` document, by ``kid``.

    Keys of another type (``MAC`` for HMAC zones, EC), another ``alg``, ``use`` other than
    ``sig``, or without a ``kid`` are skipped. An RSA key is built from ``n``/``e`` (the JWK
    form) or, when those are missing or empty, from the PEM ``value`` (what pcap-release reads;
    UAA sends both). A document or RS256 key that cannot be read raises :class:`InvalidKeySet`.
    """
    if isinstance(document, (bytes, str)):
        try:
            document = json.loads(document)
        except (ValueError, RecursionError):
            raise InvalidKeySet("the key set is not JSON") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise InvalidKeySet("the key set has no 'keys' list")
    keys: dict[str, RSAPublicKey] = {}
    for n, entry in enumerate(document["keys"]):
        if not isinstance(entry, Mapping):
            raise InvalidKeySet(f"key #{n} is not an object")
        kid = entry.get("kid")
        if (entry.get("kty") != "RSA" or entry.get("alg", ALGORITHM) != ALGORITHM
                or entry.get("use", "sig") != "sig" or not isinstance(kid, str) or not kid):
            continue
        if kid in keys:
            raise InvalidKeySet(f"key {_shown(kid)} is listed twice")
        key = _rsa_key(entry, kid)
        if key.key_size < MIN_KEY_BITS:
            raise InvalidKeySet(f"key {_shown(kid)} has {key.key_size} bits: at least "
                                f"{MIN_KEY_BITS} are needed")
        keys[kid] = key
    return keys


# --- internals ---------------------------------------------------------------------------

_MALFORMED = "malformed token: not a signed JWT (header.payload.signature, base64url)"


def _check_claims(claims: dict[str, Any], *, issuer: str, now: float,
                  leeway: float) -> Identity:
    jti = _text(claims, "jti")
    if jti is not None and jti.endswith("-r"):
        raise Unauthenticated("a refresh token is not an access token: send the access token "
                              f"(the CLI refreshes it for you; {LOGIN_HINT})")
    iss = claims["iss"]
    if not isinstance(iss, str):
        raise Unauthenticated("malformed token: its issuer (iss) is not text")
    if not same_issuer(iss, issuer):
        raise Unauthenticated(f"the token was issued by {_printable(iss)}, not by this "
                              f"platform's UAA {issuer}: log in to this platform")
    exp = _number(claims, "exp")
    iat = _number(claims, "iat")
    nbf = _number(claims, "nbf") if "nbf" in claims else None
    if exp <= now - leeway:
        raise Unauthenticated(f"the token expired at {_when(exp, now)}: {LOGIN_HINT}")
    if nbf is not None and nbf > now + leeway:
        raise Unauthenticated(f"the token is not valid before {_when(nbf, now)}: check the "
                              "clocks of the UAA and the pcapd api")
    if iat > now + leeway:
        raise Unauthenticated(f"the token was issued in the future ({_when(iat, now)}): check "
                              "the clocks of the UAA and the pcapd api")
    return _identity(claims, iss, exp)


def _identity(claims: dict[str, Any], iss: str, exp: float) -> Identity:
    client_id = _text(claims, "client_id") or _text(claims, "cid") or _text(claims, "azp")
    user_id = _text(claims, "user_id")
    user_name = _text(claims, "user_name")
    sub = _text(claims, "sub")
    is_client = user_id is None and user_name is None
    if is_client:
        client_id = client_id or sub
        if client_id is None:
            raise Unauthenticated("malformed token: neither a user (user_id) nor a client "
                                  "(client_id)")
        user_id = user_name = client_id
    else:
        user_id = user_id or sub
        if user_id is None:
            raise Unauthenticated("malformed token: a user token without user_id or sub")
        user_name = user_name or user_id
    raw = claims["scope"] if "scope" in claims else claims.get("authorities", [])
    if isinstance(raw, str):
        raw = raw.split()
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise Unauthenticated("malformed token: its scope claim is not a list of text")
    origin = _text(claims, "origin")
    return Identity(user_id=user_id, user_name=user_name, client_id=client_id or "",
                    scopes=frozenset(raw), expires_at=exp, issuer=iss,
                    origin=None if is_client else origin, is_client=is_client)


def _text(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Unauthenticated(f"malformed token: its {name} claim is not text")
    return value or None


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unauthenticated(f"malformed token: its {name} claim is not a number of seconds")
    number = float(value)
    if not math.isfinite(number):
        raise Unauthenticated(f"malformed token: its {name} claim is not a finite number")
    return number


def _when(timestamp: float, now: float) -> str:
    """``12:03:04 UTC`` on the day of ``now``, else with the date."""
    try:
        moment, today = time.gmtime(timestamp), time.gmtime(now)
    except (OverflowError, OSError, ValueError):
        return f"{timestamp:.0f} seconds after the epoch"
    if moment[:3] == today[:3]:
        return time.strftime("%H:%M:%S UTC", moment)
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", moment)


def _shown(name: str) -> str:
    return f"'{name}'" if _SAFE_NAME.fullmatch(name) else "(an unprintable name)"


def _printable(text: str, limit: int = 120) -> str:
    clean = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return clean + ("…" if len(text) > limit else "")


def _b64_int(value: Any, field: str, kid: str) -> int:
    if not isinstance(value, str) or not value:
        raise InvalidKeySet(f"key {_shown(kid)}: {field} is not base64url text")
    try:
        padded = value.replace("-", "+").replace("_", "/") + "=" * (-len(value) % 4)
        raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKeySet(f"key {_shown(kid)}: {field} is not base64url") from None
    return int.from_bytes(raw, "big")


def _rsa_key(entry: Mapping[str, Any], kid: str) -> RSAPublicKey:
    n, e = entry.get("n"), entry.get("e")
    if n and e:
        try:
            return RSAPublicNumbers(_b64_int(e, "e", kid), _b64_int(n, "n", kid)).public_key()
        except ValueError:
            raise InvalidKeySet(f"key {_shown(kid)}: n/e are not an RSA public key") from None
    value = entry.get("value")
    if not isinstance(value, str) or "BEGIN PUBLIC KEY" not in value:
        raise InvalidKeySet(f"key {_shown(kid)} has neither n/e nor a PEM value")
    try:
        key = serialization.load_pem_public_key(value.encode())
    except (ValueError, TypeError):
        raise InvalidKeySet(f"key {_shown(kid)}: its value is not a PEM public key") from None
    if not isinstance(key, RSAPublicKey):
        raise InvalidKeySet(f"key {_shown(kid)}: its value is not an RSA key")
    return key
