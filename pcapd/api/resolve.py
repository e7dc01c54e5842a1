"""From a user's target to agent jobs: what every resolver returns, the api's two resolvers,
and the shared HTTP glue.

A resolver checks the user's token, asks the platform (Cloud Controller, BOSH director) with
that same token what the user may see, applies pcapd's own rule (:mod:`pcapd.authz`) and
turns the instances into :class:`~pcapd.api.agents.AgentJob`. Instances that cannot be captured
(down, no VM) do not fail the request: they come back as :class:`Unavailable` and the user is
told, while the others are captured. The distributed api's :class:`PlatformResolver` hands a
target to the Cloud Foundry (:mod:`pcapd.api.cf`) or BOSH (:mod:`pcapd.api.bosh`) resolver;
local mode's :class:`LocalResolver` needs no platform.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import trio

from pcapd.api.agents import AgentJob
from pcapd.api.auth import TokenVerifier
from pcapd.config.model import BoshTokensConfig, CfTokensConfig
from pcapd.errors import Refusal
from pcapd.proto import AgentTarget, BoshTarget, CfTarget, Code, LocalTarget, Start
from pcapd.tokens import Acceptance, Identity, Unauthenticated
from pcapd.transport.tls import platform_context

if TYPE_CHECKING:  # they build on this module
    from pcapd.api.bosh import BoshResolver
    from pcapd.api.cf import CfResolver


@dataclass(frozen=True, slots=True)
class Unavailable:
    origin: str
    text: str
    code: Code = "INSTANCE_UNAVAILABLE"


@dataclass(frozen=True, slots=True)
class Resolution:
    """What to capture for one request, and for whom."""

    jobs: list[AgentJob]
    unavailable: list[Unavailable] = field(default_factory=list)
    names: list[tuple[str, str]] = field(default_factory=list)
    """(address, name) pairs for the pcapng Name Resolution Block: instance IPs to names."""
    identity: Identity | None = None
    target: str = ""
    """How the audit log and the stored object name the target, e.g. ``cf:my-app``."""
    audit: dict[str, str] = field(default_factory=dict)
    """More about the target for the audit line (CF: org, space, app guid, process type)."""


class Resolver(Protocol):
    """Turns a client's target into agent jobs; raises :class:`Refusal` with the reason."""

    async def resolve(self, start: Start, token: str | None) -> Resolution: ...

    async def verify(self, start: Start, token: str) -> Identity:
        """Check a refreshed token for a capture of ``start`` (same rules as at the start)."""
        ...

    async def identify(self, token: str | None) -> Identity:
        """Who is asking (for stored captures): a token of any configured platform."""
        ...


class LocalResolver:
    """Local mode: named namespaces (or the host) on one agent, or the agents given with --agent.

    ``agents`` lists ``(host, port, netns or None)``; with ``from_request`` the namespaces come
    from the client's ``local`` target and run on the first agent (the embedded one).
    """

    def __init__(self, agents: list[tuple[str, int, str | None]], *,
                 from_request: bool) -> None:
        self.agents = agents
        self.from_request = from_request

    async def resolve(self, start: Start, token: str | None) -> Resolution:
        if not isinstance(start.target, LocalTarget):
            raise Refusal("INVALID_REQUEST", "this is a local pcapd api: it captures local "
                          "targets only (pcapd capture local)")
        if self.from_request:
            host, port, _ = self.agents[0]
            names: list[str | None] = list(start.target.netns) or [None]
            jobs = [_local_job(host, port, name) for name in names]
        else:
            jobs = [_local_job(host, port, name) for host, port, name in self.agents]
        return Resolution(jobs, target="local:" + ",".join(j.origin for j in jobs))

    async def verify(self, start: Start, token: str) -> Identity:
        raise Refusal("INVALID_REQUEST", "a local capture takes no token")

    async def identify(self, token: str | None) -> Identity:
        return LOCAL_USER


def _local_job(host: str, port: int, netns: str | None) -> AgentJob:
    label = netns or "host"
    return AgentJob(host, port, AgentTarget(namespace=label, source=label), origin=label)


class PlatformResolver:
    """The distributed api's resolver: Cloud Foundry and/or BOSH, as configured."""

    def __init__(self, cf: CfResolver | None, bosh: BoshResolver | None) -> None:
        self.cf = cf
        self.bosh = bosh

    def _for(self, start: Start) -> CfResolver | BoshResolver:
        target = start.target
        if isinstance(target, CfTarget):
            if self.cf is None:
                raise Refusal("INVALID_REQUEST", "this pcapd api serves no Cloud Foundry "
                              "(no cf section in its config)")
            return self.cf
        if isinstance(target, BoshTarget):
            if self.bosh is None:
                raise Refusal("INVALID_REQUEST", "this pcapd api serves no BOSH director "
                              "(no bosh section in its config)")
            return self.bosh
        raise Refusal("INVALID_REQUEST", "local targets are captured by `pcapd capture "
                      "local` on the machine itself, not through a shared api")

    async def resolve(self, start: Start, token: str | None) -> Resolution:
        return await self._for(start).resolve(start, token)

    async def verify(self, start: Start, token: str) -> Identity:
        return await self._for(start).verify(start, token)

    async def identify(self, token: str | None) -> Identity:
        """The token's user, checked by whichever configured platform's UAA issued it."""
        if token is None:
            raise Refusal("UNAUTHENTICATED", "no token: log in first (cf login / bosh log-in)")
        refusal: Refusal | None = None
        for resolver in (self.cf, self.bosh):
            if resolver is None:
                continue
            try:
                return await resolver.identify(token)
            except Refusal as exc:
                refusal = refusal or exc
        raise refusal or Refusal("UNAUTHENTICATED", "this api serves no platform")


LOCAL_USER = Identity(user_id="local", user_name="local", client_id="pcapd",
                      scopes=frozenset(), expires_at=float("inf"), issuer="local")
"""Whoever runs ``pcapd capture local``: the machine's own user, no platform behind it."""


class UaaPlatform:
    """What the Cloud Foundry and BOSH resolvers share: the platform's root document names
    its UAA (found once, found again after a failure), and the user's token is checked there.

    Subclasses implement :meth:`_find_uaa`: (the platform value they need, the UAA URL).
    """

    login: str = "log in"
    """The command that gets a user a token, for messages (``cf login``)."""

    platform: str = "the platform"
    """Its name, for messages (``Cloud Foundry``)."""

    setting: str = "tokens"
    """The config section of its acceptance rule, for messages (``cf.tokens``)."""

    def __init__(self, http: httpx.AsyncClient, tokens: CfTokensConfig | BoshTokensConfig
                 ) -> None:
        self.http = http
        self.accept = Acceptance(platform=self.platform, login=self.login,
                                 audiences=frozenset(tokens.audiences), scopes=tokens.scopes,
                                 clients=frozenset(tokens.clients), setting=self.setting)
        """The one acceptance rule for this platform's tokens, on every request."""
        self._found: tuple[str, TokenVerifier] | None = None
        self._finding = trio.Lock()

    async def _find_uaa(self) -> tuple[str, str]:
        raise NotImplementedError

    async def _discover(self) -> tuple[str, TokenVerifier]:
        async with self._finding:
            if self._found is None:
                value, uaa = await self._find_uaa()
                self._found = value, TokenVerifier(uaa_url=uaa, http=self.http,
                                                   accept=self.accept)
            return self._found

    async def verify(self, start: Start, token: str) -> Identity:
        """A renewed token is authorized again for the same target, exactly as at the start
        (the platform asked with the new token, pcapd's rule applied): a token may be renewed
        with less than it had — a BOSH team scope removed, a space role revoked."""
        resolution = await self.resolve(start, token)
        assert resolution.identity is not None
        return resolution.identity

    async def resolve(self, start: Start, token: str | None) -> Resolution:
        raise NotImplementedError

    async def identify(self, token: str | None) -> Identity:
        """The token's user, verified against this platform's UAA."""
        if token is None:
            raise Refusal("UNAUTHENTICATED", f"no token: log in with `{self.login}` first")
        _, verifier = await self._discover()
        try:
            return await verifier.verify(token)
        except Unauthenticated as exc:
            raise Refusal("UNAUTHENTICATED", str(exc)) from None


async def get_json(http: httpx.AsyncClient, url: str, *, token: str | None,
                   what: str) -> tuple[int, Any]:
    """GET ``url`` (with the user's bearer token); (status, parsed JSON or None).

    Unreachable or unparsable answers become a :class:`Refusal` naming ``what`` and the URL —
    never the token.
    """
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"bearer {token}"
    try:
        response = await http.get(url, headers=headers)
    except httpx.HTTPError as exc:
        raise Refusal("START_CAPTURE_FAILED", f"cannot reach {what} at {_origin(url)}: "
                      f"{type(exc).__name__}: {exc}") from None
    try:
        body = response.json() if response.content else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    return response.status_code, body


def _origin(url: str) -> str:
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.netloc.decode()}"


def http_client(ca: str | None, *, what: str = "ca") -> httpx.AsyncClient:
    """An HTTP client for a platform API: its own CA when configured, the default trust
    otherwise; TLS 1.2 at least, AEAD suites only, as on pcapd's own links
    (:func:`pcapd.transport.tls.platform_context`). ``what`` is the CA's config key, for
    errors (``cf.ca``).

    Built before the event loop starts (reading the CA file blocks).
    """
    return httpx.AsyncClient(verify=platform_context(ca, what=what),
                             timeout=httpx.Timeout(15.0), follow_redirects=False)
