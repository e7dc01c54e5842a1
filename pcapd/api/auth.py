"""The api's token check: the UAA's signing keys fetched and cached over HTTP, tokens verified.

The decisions live in :mod:`pcapd.tokens` (pure); this module is the Trio/httpx edge around
them: where the keys come from, when they are fetched again, and how the token is taken from
the WebSocket handshake.

Keys come from ``<uaa>/token_keys`` of the UAA the platform names (Cloud Controller's root
document, the director's ``/info``) — never from the token's ``jku`` header: a token must not
choose where its own verifying key comes from (a forged token would simply point at the
forger's key set). They are cached; a token with an unknown ``kid`` (the UAA rotated its key)
triggers a refetch, at most one per ``refetch_interval`` however many such tokens arrive, and
concurrent verifications wait for the one fetch in flight; a failed fetch is remembered as
long, so a UAA that is down is not asked again for every request. The whole key set is also
fetched again once it is ``max_key_age`` old, so a key the UAA retired stops being trusted; if
the UAA cannot be reached then, the cached keys are kept (the next try waits
``refetch_interval``).

Tokens appear in no log line and no error; after verification the user's name and id are
logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx
import trio
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from pcapd.errors import PcapdError, Refusal
from pcapd.tokens import (
    DEFAULT_LEEWAY,
    Acceptance,
    Identity,
    InvalidKeySet,
    parse_jwks,
    unverified_header,
    verify,
)

log = logging.getLogger(__name__)

DEFAULT_REFETCH_INTERVAL = 30.0
DEFAULT_MAX_KEY_AGE = 600.0


class IdentityProviderUnavailable(Refusal, PcapdError):
    """The UAA's signing keys could not be fetched: unreachable, an error status, bad JSON.

    Not the user's fault and not a verdict on the token, so not UNAUTHENTICATED: the capture
    cannot start (``START_CAPTURE_FAILED``, as when Cloud Controller or the director cannot be
    reached) and trying again later may work. The message names the UAA, never the token.
    A :class:`~pcapd.errors.Refusal` too, so a handler that answers refusals
    answers this one without knowing it.
    """

    def __init__(self, text: str) -> None:
        super().__init__("START_CAPTURE_FAILED", text)


@dataclass(frozen=True, slots=True)
class VerifierStatistics:
    key_ids: tuple[str, ...]
    fetches: int
    """Fetches of ``/token_keys`` tried (successful or not)."""
    failures: int
    verified: int


class TokenVerifier:
    """Verifies UAA access tokens against the signing keys of one UAA."""

    def __init__(self, *, uaa_url: str, http: httpx.AsyncClient,
                 leeway: float = DEFAULT_LEEWAY,
                 refetch_interval: float = DEFAULT_REFETCH_INTERVAL,
                 max_key_age: float = DEFAULT_MAX_KEY_AGE,
                 clock: Callable[[], float] = time.time,
                 accept: Acceptance | None = None) -> None:
        self.uaa_url = uaa_url.rstrip("/")
        self.issuer = self.uaa_url + "/oauth/token"
        self.token_keys_url = self.uaa_url + "/token_keys"
        self.http = http
        self.leeway = leeway
        self.refetch_interval = refetch_interval
        self.max_key_age = max_key_age
        self.clock = clock
        self.accept = accept
        self._keys: dict[str, RSAPublicKey] = {}
        # Trio times: the last successful fetch, the last fetch for an unknown kid (the rate
        # limit), the last failed fetch (remembered as long, so a down UAA is not hammered).
        self._loaded_at: float | None = None
        self._refetched_at: float | None = None
        self._failed_at: float | None = None
        self._failure: IdentityProviderUnavailable | None = None
        self._lock = trio.Lock()
        self._fetches = 0
        self._failures = 0
        self._verified = 0

    async def verify(self, token: str) -> Identity:
        """The identity ``token`` speaks for (with ``accept``: only a token that rule accepts);
        :class:`~pcapd.tokens.Unauthenticated` with the reason, or
        :class:`IdentityProviderUnavailable` if the keys cannot be had."""
        kid: str = unverified_header(token)["kid"]  # alg and kid checked before any I/O
        if kid not in self._keys or self._stale():
            await self._refresh(kid)
        identity = verify(token, self._keys, issuer=self.issuer, now=self.clock(),
                          leeway=self.leeway, accept=self.accept)
        self._verified += 1
        log.info("authenticated %s %s (user id %s, client %s)",
                 "client" if identity.is_client else "user", identity.user_name,
                 identity.user_id, identity.client_id,
                 extra={"event": "authenticated", "user_name": identity.user_name,
                        "user_id": identity.user_id})
        return identity

    async def load_keys(self) -> None:
        """Fetch the key set now (at startup, to find a wrong UAA URL early)."""
        async with self._lock:
            await self._fetch()

    def statistics(self) -> VerifierStatistics:
        return VerifierStatistics(key_ids=tuple(sorted(self._keys)), fetches=self._fetches,
                                  failures=self._failures, verified=self._verified)

    # --- internals -----------------------------------------------------------------------

    def _stale(self) -> bool:
        return self._loaded_at is not None and \
            trio.current_time() - self._loaded_at >= self.max_key_age

    def _recent(self, moment: float | None) -> bool:
        return moment is not None and trio.current_time() - moment < self.refetch_interval

    async def _refresh(self, kid: str) -> None:
        async with self._lock:  # one fetch in flight; the others wait here and reuse it
            known = kid in self._keys
            if known and not self._stale():
                return
            if self._failure is not None and self._recent(self._failed_at):
                if known:
                    return  # stale keys beat none while the UAA is down
                raise IdentityProviderUnavailable(str(self._failure))
            refetch = not known and self._loaded_at is not None  # not the first load
            if refetch and self._recent(self._refetched_at):
                return  # rate limited: verify() says "unknown signing key"
            try:
                await self._fetch()
            except IdentityProviderUnavailable:
                if not known:
                    raise
                log.warning("keeping the cached UAA keys (%s old): %s",
                            _age(self._loaded_at), self._failure)
            finally:
                if refetch:
                    self._refetched_at = trio.current_time()

    async def _fetch(self) -> None:
        self._fetches += 1
        try:
            keys = await self._get_keys()
        except IdentityProviderUnavailable as exc:
            self._failures += 1
            self._failure, self._failed_at = exc, trio.current_time()
            log.warning("%s", exc, extra={"event": "uaa_keys_failed"})
            raise
        self._loaded_at = trio.current_time()
        self._failure = self._failed_at = None
        if keys.keys() != self._keys.keys():
            log.info("UAA %s signing keys: %s", self.uaa_url, ", ".join(sorted(keys)),
                     extra={"event": "uaa_keys", "key_ids": sorted(keys)})
        self._keys = keys

    async def _get_keys(self) -> dict[str, RSAPublicKey]:
        url = self.token_keys_url
        try:
            response = await self.http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            detail = f": {exc}" if str(exc) else ""
            raise IdentityProviderUnavailable(
                f"cannot reach the UAA at {url} to check the token ({type(exc).__name__}"
                f"{detail}): try again later") from None
        if response.status_code != 200:
            raise IdentityProviderUnavailable(
                f"the UAA at {url} answered HTTP {response.status_code}: cannot check the "
                "token; try again later")
        try:
            keys = parse_jwks(response.content)
        except InvalidKeySet as exc:
            raise IdentityProviderUnavailable(
                f"the UAA at {url} sent an unusable key set: {exc}") from None
        if not keys:
            raise IdentityProviderUnavailable(
                f"the UAA at {url} lists no RS256 signing key: pcapd verifies only RS256 "
                "tokens (is the identity zone configured for HMAC?)")
        return keys


def authorization_from_headers(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The ``Authorization`` value of a WebSocket handshake's headers (trio-websocket's
    ``handshake_headers``): names compared case-insensitively; repeated headers are joined
    with ", " as HTTP does, which :func:`~pcapd.tokens.bearer_token` then refuses."""
    values = [value.decode("latin-1") for name, value in headers
              if name.decode("latin-1").lower() == "authorization"]
    return ", ".join(values) if values else None


def _age(since: float | None) -> str:
    return "never loaded" if since is None else f"{trio.current_time() - since:.0f} s"


__all__ = [
    "IdentityProviderUnavailable",
    "TokenVerifier",
    "VerifierStatistics",
    "authorization_from_headers",
]
