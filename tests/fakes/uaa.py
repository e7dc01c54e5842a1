"""A fake UAA: signing keys at ``/token_keys``, RS256 access tokens shaped like UAA's, the
refresh grant at ``/oauth/token``, and forgeries for negative tests.

Shapes follow docs/reference external-apis §1: token claims as a cf-CLI-obtained token (scope a
JSON array, ``aud`` = scope base names + client id), JWKS entries with a PEM ``value`` and real
``n``/``e``, UAA's ``{"error", "error_description"}`` bodies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

import jwt
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .http import FakeServer, Request, Response, json_response

CF_SCOPES = ("openid", "cloud_controller.read", "cloud_controller.write", "password.write",
             "uaa.user")
BOSH_SCOPES = ("openid", "bosh.admin")
CLIENT_AUTHORITIES = ("uaa.none",)

_POOL: dict[int, rsa.RSAPrivateKey] = {}  # RSA keys are slow to make: one pool per process
_POOL_LOCK = threading.Lock()
_fresh = 100  # next pool index for FakeUAA(fresh_keys=True)


def _pool_key(index: int) -> rsa.RSAPrivateKey:
    with _POOL_LOCK:
        if index not in _POOL:
            _POOL[index] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return _POOL[index]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return ".".join(_b64url(json.dumps(part, separators=(",", ":")).encode())
                    for part in (header, claims))


@dataclass(frozen=True)
class User:
    user_id: str
    user_name: str
    email: str
    origin: str = "uaa"


def make_user(name: str) -> User:
    """A user with a stable id derived from the name."""
    return User(str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.users.example.com")), name,
                f"{name}@example.com")


ALICE, BOB, CAROL = make_user("alice"), make_user("bob"), make_user("carol")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: rsa.RSAPrivateKey

    @property
    def pem(self) -> str:
        """PEM SubjectPublicKeyInfo (64-character lines), as UAA's ``value``."""
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo).decode().strip()

    def jwk(self) -> dict[str, Any]:
        numbers = self.private.public_key().public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        return {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid, "value": self.pem,
                "n": _b64url(n), "e": _b64url(e)}


@dataclass
class _RefreshGrant:
    user: User | None
    client_id: str
    scopes: tuple[str, ...]
    grant_type: str
    exp: int
    revoked: bool = False


class FakeUAA(FakeServer):
    name = "uaa"

    def __init__(self, *, tls: trustme.CA | None = None, kid_prefix: str = "key-",
                 fresh_keys: bool = False) -> None:
        super().__init__(tls=tls)
        global _fresh
        with _POOL_LOCK:
            self._pool_next, _fresh = (_fresh, _fresh + 100) if fresh_keys else (0, _fresh)
        self._kid_prefix = kid_prefix
        self._keys: list[SigningKey] = []
        self._active = ""
        self._keys_changed_ms = 0
        self._issuer: str | None = None
        self._refresh: dict[str, _RefreshGrant] = {}
        self.clients: dict[str, str] = {"cf": "", "bosh_cli": ""}  # client id -> secret
        self.access_token_lifetime = 600  # for tokens from the refresh grant
        self.refresh_token_lifetime = 86400
        self.refresh_attempts = 0  # POSTs to /oauth/token
        self.refreshes = 0  # successful refresh grants
        self.client_scopes: dict[str, tuple[str, ...]] = {}  # client id -> its authorities
        self.client_grants = 0  # successful client_credentials grants
        self.rotate()
        self._foreign = SigningKey(self._active, _pool_key(-1))  # never listed

    # -- keys ------------------------------------------------------------------------------------
    def rotate(self) -> str:
        """Make a new active signing key; older keys stay listed until :meth:`retire`."""
        with self.lock:
            number = len(self._keys) + 1
            while any(k.kid == f"{self._kid_prefix}{number}" for k in self._keys):
                number += 1
            key = SigningKey(f"{self._kid_prefix}{number}", _pool_key(self._pool_next))
            self._pool_next += 1
            self._keys.append(key)
            self._active = key.kid
            self._keys_changed_ms = time.time_ns() // 1_000_000
            return key.kid

    def retire(self, kid: str) -> None:
        with self.lock:
            self._keys = [k for k in self._keys if k.kid != kid]
            self._keys_changed_ms = time.time_ns() // 1_000_000

    @property
    def kids(self) -> list[str]:
        with self.lock:
            return [k.kid for k in self._keys]

    @property
    def active_kid(self) -> str:
        return self._active

    def key(self, kid: str | None = None) -> SigningKey:
        with self.lock:
            wanted = kid or self._active
            for k in self._keys:
                if k.kid == wanted:
                    return k
        raise KeyError(wanted)

    @property
    def issuer(self) -> str:
        return self._issuer or f"{self.url}/oauth/token"

    @issuer.setter
    def issuer(self, value: str | None) -> None:
        self._issuer = value

    # -- tokens -----------------------------------------------------------------------------------
    def claims(self, user: User | None = None, *, client_id: str | None = None,
               scopes: tuple[str, ...] | list[str] | None = None, lifetime: int = 600,
               issuer: str | None = None, jti: str | None = None,
               extra: dict[str, Any] | None = None, iat: int | None = None,
               nbf: int | None = None, grant_type: str | None = None) -> dict[str, Any]:
        """The claims :meth:`issue` would sign (UAA's access-token shape, reference §1.3)."""
        client_id = client_id or "cf"
        if scopes is None:
            scopes = (CLIENT_AUTHORITIES if user is None
                      else BOSH_SCOPES if client_id == "bosh_cli" else CF_SCOPES)
        scopes = list(scopes)
        now = int(time.time()) if iat is None else iat
        aud = list(dict.fromkeys([s.split(".")[0] for s in scopes] + [client_id]))
        sub = user.user_id if user else client_id
        claims: dict[str, Any] = {"jti": jti or uuid.uuid4().hex, "sub": sub}
        if user is None:
            claims["authorities"] = scopes
        claims.update({"scope": scopes, "client_id": client_id, "cid": client_id,
                       "azp": client_id,
                       "grant_type": grant_type or ("password" if user else "client_credentials")})
        if user is not None:
            claims.update({"user_id": user.user_id, "origin": user.origin,
                           "user_name": user.user_name, "email": user.email, "auth_time": now})
        claims.update({
            "rev_sig": f"{zlib.crc32(f'{sub}:{client_id}'.encode()):08x}",
            "iat": now, "exp": now + lifetime, "iss": issuer or self.issuer, "zid": "uaa",
            "aud": aud})
        if nbf is not None:
            claims["nbf"] = nbf
        claims.update(extra or {})
        return claims

    def header(self, kid: str | None = None, alg: str = "RS256") -> dict[str, Any]:
        return {"alg": alg, "jku": f"{self.url}/token_keys", "kid": kid or self._active,
                "typ": "JWT"}

    def issue(self, user: User | None = None, *, kid: str | None = None, **kw: Any) -> str:
        """An RS256 access token; ``kw`` are those of :meth:`claims` (client_id, scopes, …)."""
        key = self.key(kid)
        return jwt.encode(self.claims(user, **kw), key.private, algorithm="RS256",
                          headers=self.header(key.kid))

    def issue_refresh(self, user: User | None = None, *, client_id: str = "cf",
                      scopes: tuple[str, ...] | list[str] | None = None,
                      lifetime: int | None = None, grant_type: str | None = None) -> str:
        """A refresh token (``jti`` ends in ``-r``) that ``/oauth/token`` will accept."""
        claims = self.claims(user, client_id=client_id, scopes=scopes,
                             lifetime=self.refresh_token_lifetime if lifetime is None else lifetime,
                             jti=f"{uuid.uuid4().hex}-r", grant_type=grant_type)
        for name in ("auth_time", "email", "authorities"):
            claims.pop(name, None)
        with self.lock:
            self._refresh[claims["jti"]] = _RefreshGrant(
                user, client_id, tuple(claims["scope"]), claims["grant_type"], claims["exp"])
        key = self.key()
        return jwt.encode(claims, key.private, algorithm="RS256", headers=self.header(key.kid))

    def issue_pair(self, user: User | None = None, *, client_id: str = "cf",
                   scopes: tuple[str, ...] | list[str] | None = None,
                   lifetime: int = 600) -> tuple[str, str]:
        """(access token, refresh token) as a login would give."""
        return (self.issue(user, client_id=client_id, scopes=scopes, lifetime=lifetime),
                self.issue_refresh(user, client_id=client_id, scopes=scopes))

    def expired(self, user: User | None = None, **kw: Any) -> str:
        """A well-signed token that expired ten minutes ago."""
        lifetime = kw.pop("lifetime", 600)
        kw.setdefault("iat", int(time.time()) - lifetime - 600)
        return self.issue(user, lifetime=lifetime, **kw)

    def forge_none(self, user: User | None = None, **kw: Any) -> str:
        """``alg: none``, no signature."""
        return _unsigned(self.header(alg="none"), self.claims(user, **kw)) + "."

    def forge_hmac(self, user: User | None = None, **kw: Any) -> str:
        """HS256 keyed with the published PEM of the active key (the alg-confusion attack)."""
        signing_input = _unsigned(self.header(alg="HS256"), self.claims(user, **kw))
        mac = hmac.new(self.key().pem.encode(), signing_input.encode(), hashlib.sha256)
        return f"{signing_input}.{_b64url(mac.digest())}"

    def forge_unknown_key(self, user: User | None = None, **kw: Any) -> str:
        """RS256 under the active ``kid`` but signed by a key that ``/token_keys`` never lists."""
        return jwt.encode(self.claims(user, **kw), self._foreign.private, algorithm="RS256",
                          headers=self.header())

    def revoke(self, refresh_token: str) -> None:
        jti = _jti(refresh_token)
        with self.lock:
            if jti in self._refresh:
                self._refresh[jti].revoked = True

    def verify(self, token: str) -> dict[str, Any] | None:
        """Claims of a valid access token (RS256, listed key, unexpired, our issuer), or None."""
        claims = self._decode(token)
        if claims is None or str(claims.get("jti", "")).endswith("-r"):
            return None
        return claims

    def _decode(self, token: str) -> dict[str, Any] | None:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self.key(kid).private.public_key()
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=["RS256"], issuer=self.issuer,
                options={"verify_aud": False, "require": ["exp", "iat", "jti"]})
        except (jwt.PyJWTError, KeyError):
            return None
        return claims

    # -- HTTP -------------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        route = (request.method, request.path.rstrip("/") or "/")
        if route == ("GET", "/token_keys"):
            with self.lock:
                etag = f'"{self._keys_changed_ms}"'
                keys = [k.jwk() for k in self._keys]
            if (request.header("If-None-Match") or "").strip() in (etag, etag.strip('"')):
                return Response(304, headers={"ETag": etag})
            return json_response(200, {"keys": keys}, {"ETag": etag})
        if route == ("GET", "/token_key"):
            return json_response(200, self.key().jwk())
        if route == ("GET", "/.well-known/openid-configuration"):
            return json_response(200, {
                "issuer": self.issuer, "jwks_uri": f"{self.url}/token_keys",
                "token_endpoint": f"{self.url}/oauth/token",
                "authorization_endpoint": f"{self.url}/oauth/authorize",
                "id_token_signing_alg_values_supported": ["RS256"]})
        if route == ("POST", "/oauth/token"):
            return self._token_endpoint(request)
        return _error(404, "not_found", f"No handler for {request.method} {request.path}")

    def _token_endpoint(self, request: Request) -> Response:
        with self.lock:
            self.refresh_attempts += 1
        form = request.form()
        client = _basic(request.header("Authorization"))
        if client is None and "client_id" in form:
            client = (form["client_id"], form.get("client_secret", ""))
        if client is None:
            return _error(401, "unauthorized",
                          "Full authentication is required to access this resource")
        if self.clients.get(client[0]) != client[1]:
            return _error(401, "unauthorized", "Bad credentials")
        if form.get("grant_type") == "client_credentials":
            return self._client_credentials(client[0])
        if form.get("grant_type") != "refresh_token":
            return _error(400, "unsupported_grant_type",
                          f"Unsupported grant type: {form.get('grant_type')}")
        raw = form.get("refresh_token", "")
        claims = self._decode(raw)
        jti = _jti(raw)
        with self.lock:
            grant = self._refresh.get(jti) if claims else None
            usable = grant is not None and not grant.revoked and grant.exp > time.time()
        if grant is None or not usable:
            return _error(401, "invalid_token",
                          f"The token expired, was revoked, or the token ID is incorrect: {jti}")
        if grant.client_id != client[0]:
            return _error(401, "invalid_grant", f"Wrong client for this refresh token: {jti}")
        lifetime = self.access_token_lifetime
        access = self.issue(grant.user, client_id=grant.client_id, scopes=grant.scopes,
                            lifetime=lifetime, grant_type=grant.grant_type)
        refresh = self.issue_refresh(grant.user, client_id=grant.client_id,
                                     scopes=grant.scopes, grant_type=grant.grant_type)
        with self.lock:
            self.refreshes += 1
        return json_response(200, {
            "access_token": access, "token_type": "bearer", "refresh_token": refresh,
            "expires_in": lifetime, "scope": " ".join(grant.scopes), "jti": _jti(access)})

    def _client_credentials(self, client_id: str) -> Response:
        """UAA's client_credentials grant: an access token of the client, no refresh token."""
        scopes = self.client_scopes.get(client_id, CLIENT_AUTHORITIES)
        access = self.issue(None, client_id=client_id, scopes=scopes,
                            lifetime=self.access_token_lifetime)
        with self.lock:
            self.client_grants += 1
        return json_response(200, {
            "access_token": access, "token_type": "bearer",
            "expires_in": self.access_token_lifetime, "scope": " ".join(scopes),
            "jti": _jti(access)})


def _jti(token: str) -> str:
    try:
        return str(jwt.decode(token, options={"verify_signature": False}).get("jti", token))
    except jwt.PyJWTError:
        return token


def _basic(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, secret = base64.b64decode(encoded.strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return ("", "\0")  # undecodable credentials are bad credentials
    return user, secret


def _error(status: int, code: str, description: str) -> Response:
    headers = {}
    if status == 401:
        realm = 'Basic realm="UAA/client"' if code == "unauthorized" else 'Bearer realm="UAA/oauth"'
        headers["WWW-Authenticate"] = f'{realm}, error="{code}"'
    return json_response(status, {"error": code, "error_description": description}, headers)
