"""The config objects of the agent and the api: frozen msgspec Structs, the single source of truth.

The types carry the per-value rules (``Meta`` constraints, literals, required or defaulted); the
few rules that tie two values together live in each Struct's ``_rules`` method, which the parser
calls once the Struct's own values are well typed. No function here reads a file.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Iterator
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

DEFAULT_AGENT_PORT = 9494
DEFAULT_AGENT_SERVER_NAME = "pcap-agent.service.cf.internal"
DEFAULT_API_CLIENT_NAME = "pcapd-api"


class Secret:
    """A string that never shows itself: not in ``repr``, ``str``, logs, tracebacks or errors.

    Call :meth:`reveal` at the one place that must hand the value on (the S3 client).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return (Secret, (self._value,))


NonEmpty = Annotated[str, Meta(min_length=1)]


def _why(description: str) -> Meta:
    """Say what a required value is for; the "missing" message repeats it."""
    return Meta(description=description)


FilePath = Annotated[str, Meta(min_length=1, extra={"what": "a file path"})]
Port = Annotated[int, Meta(ge=1, le=65535)]
Count = Annotated[int, Meta(ge=1)]
Seconds = Annotated[float, Meta(gt=0)]
NonNegativeSeconds = Annotated[float, Meta(ge=0)]
Snaplen = Annotated[int, Meta(ge=1, le=262144)]
Url = Annotated[str, Meta(min_length=1, extra={"what": "an http(s) URL"})]
LogLevel = Literal["debug", "info", "warning", "error"]

Rule = tuple[str, str]
"""A cross-value problem: (key relative to the Struct, ``what is wrong — what to do``)."""


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    def _rules(self) -> Iterator[Rule]:
        return iter(())


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def is_host(text: str) -> bool:
    """True for an IP address or a DNS host name (what a listener or a SAN accepts)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        last = text.rstrip(".").rpartition(".")[2]
        # an all-numeric last label is a mistyped IP address, not a name
        return len(text) <= 253 and _HOSTNAME.fullmatch(text) is not None and not last.isdigit()
    return True


def _host_rule(key: str, value: str) -> Iterator[Rule]:
    if not is_host(value):
        yield key, f"expected an IP address or host name, got {value!r}"


def _url_rule(key: str, value: str, example: str) -> Iterator[Rule]:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        yield key, f"expected an http(s) URL such as {example}, got {value!r}"


# -- shared sections ---------------------------------------------------------------------------


class BufferConfig(_Section, frozen=True):
    """A bounded packet buffer with hysteresis, so congestion neither grows memory nor flaps.

    Past ``upper_limit`` packets are dropped (and counted) until the buffer drains to
    ``lower_limit``; ``size`` is the hard cap. Hence ``0 < lower_limit < upper_limit <= size``.
    """

    size: Count  # packets the buffer may hold at most
    upper_limit: Count  # packets: dropping starts when the buffer holds this many
    lower_limit: Count  # packets: dropping stops once the buffer has drained to this many

    def _rules(self) -> Iterator[Rule]:
        if self.upper_limit > self.size:
            yield (
                "upper_limit",
                f"must not exceed buffer.size ({self.upper_limit} > {self.size}) — "
                "lower it or raise buffer.size",
            )
        if self.lower_limit >= self.upper_limit:
            yield (
                "lower_limit",
                f"must be below buffer.upper_limit ({self.lower_limit} ≥ {self.upper_limit}) — "
                "the gap between them is the hysteresis",
            )


class LogConfig(_Section, frozen=True):
    """Logs: one line per event on stderr, JSON for a log pipeline or text for people."""

    level: LogLevel = "info"  # the least severe level written (logs go to stderr)
    format: Literal["json", "text"] = "json"  # json: one object per line; text: for people


class ServerTlsConfig(_Section, frozen=True):
    """A server certificate and its key (PEM files)."""

    certificate: FilePath  # the certificate (PEM file), with its chain if any
    private_key: FilePath  # its key (PEM file, mode 0600)


# -- agent -------------------------------------------------------------------------------------


class AgentListenConfig(_Section, frozen=True):
    """The agent's one port, all mutual TLS: the api's WebSocket links, ``GET /status`` and
    ``GET /metrics``."""

    address: NonEmpty = "0.0.0.0"  # where the agent accepts the api and /status, /metrics
    port: Port = DEFAULT_AGENT_PORT  # the api dials this port: keep it equal to agents.port

    def _rules(self) -> Iterator[Rule]:
        yield from _host_rule("address", self.address)


class AgentTlsConfig(_Section, frozen=True):
    """The agent's server certificate and the CA its clients' certificates must come from."""

    certificate: Annotated[FilePath, _why("the agent's server certificate (PEM file)")]
    private_key: Annotated[FilePath, _why("the key of tls.certificate (PEM file, mode 0600)")]
    client_ca: Annotated[
        FilePath,
        _why(
            "the CA file (PEM) that issued the api's client certificate; "
            "the agent accepts only clients with a certificate from it"
        ),
    ]
    # the name the api's client certificate must carry (a DNS SAN, or its common name when
    # it has none), with the clientAuth extended key usage: any other certificate of the CA
    # is refused
    client_name: NonEmpty = DEFAULT_API_CLIENT_NAME


class ContainersConfig(_Section, frozen=True):
    """Where a Diego cell keeps its containers' network namespaces and their metadata."""

    # one network namespace file per app container, named by its instance guid; not set:
    # the agent captures only its VM's own interfaces
    netns_dir: FilePath | None = None
    # garden's container-metadata store.json; set: a container is captured only for the app
    # that owns it
    metadata_store: FilePath | None = None


class AgentLimitsConfig(_Section, frozen=True):
    """What one agent accepts, whatever the api asks; the api's own limits apply on top."""

    concurrent_captures: Count = 5  # captures this agent runs at once; more: LIMIT_REACHED
    max_snaplen: Snaplen = 65535  # the largest snaplen a request may ask for


class AgentBufferConfig(BufferConfig, frozen=True):
    size: Count = 1000
    upper_limit: Count = 950
    lower_limit: Count = 800


class AgentRecorderConfig(_Section, frozen=True):
    """The flight recorder (``pcapd record``): rings of this VM's recent packets, kept for a
    user to save a past window. Every recording reserves its whole ``max_bytes`` from this
    budget when it starts; one that does not fit is refused (LIMIT_REACHED) and running
    recordings are never squeezed, so the VM's workload never feels more than ``max_bytes``."""

    # where rings live: memory (the agent's own memory, counted against max_bytes);
    # directory (segment files under recorder.directory, counted on disk against max_bytes)
    storage: Literal["memory", "directory"] = "memory"
    # the directory of rings for storage: directory (on the ephemeral disk; emptied when the
    # agent starts: a restart loses its rings)
    directory: Annotated[str, Meta(min_length=1, extra={"what": "a directory path"})] | None = None
    # bytes all recordings on this VM may hold together (each reserves its max_bytes), in
    # memory or on disk; with storage: directory a recording is also refused when the
    # filesystem's free space cannot hold its max_bytes
    max_bytes: Count = 256 << 20
    max_recordings: Count = 8  # recordings this agent keeps at once; more: LIMIT_REACHED

    def _rules(self) -> Iterator[Rule]:
        if self.storage == "directory":
            if self.directory is None:
                yield "directory", "storage: directory needs it: a directory on the ephemeral disk"
            elif not self.directory.startswith("/"):
                yield "directory", f"{self.directory!r} must be an absolute path"
            elif self.directory.rstrip("/") in ("", "/tmp", "/var", "/var/vcap", "/var/vcap/data"):
                yield "directory", (f"{self.directory!r} is emptied when the agent starts: "
                                    "give it a directory of its own")
        elif self.directory is not None:
            yield "directory", "only used with recorder.storage: directory — remove it"


class AgentConfig(_Section, frozen=True):
    """``pcapd agent --config FILE`` (SPEC §8)."""

    id: Annotated[NonEmpty, _why("the origin shown to users, e.g. router/d55baeba-...")]
    tls: AgentTlsConfig
    listen: AgentListenConfig = msgspec.field(default_factory=AgentListenConfig)
    containers: ContainersConfig = msgspec.field(default_factory=ContainersConfig)
    limits: AgentLimitsConfig = msgspec.field(default_factory=AgentLimitsConfig)
    buffer: AgentBufferConfig = msgspec.field(default_factory=AgentBufferConfig)
    recorder: AgentRecorderConfig = msgspec.field(default_factory=AgentRecorderConfig)
    # seconds running captures get to end gracefully after SIGTERM (a second signal: at once)
    drain_timeout: Seconds = 30.0
    log: LogConfig = msgspec.field(default_factory=LogConfig)


# -- api ---------------------------------------------------------------------------------------


class ApiListenConfig(_Section, frozen=True):
    """Where users connect: the WebSocket endpoint of ``pcapd capture``, and plain HTTP
    ``GET /status``, ``/metrics`` and ``/downloads/`` on the same port."""

    address: NonEmpty = "0.0.0.0"  # where users (or gorouter) connect; also /status, /metrics
    port: Port = 8080  # gorouter's route points here (route_registrar's port or tls_port)
    tls: ServerTlsConfig | None = None  # behind gorouter, TLS usually ends at the router

    def _rules(self) -> Iterator[Rule]:
        yield from _host_rule("address", self.address)


class AgentsTlsConfig(_Section, frozen=True):
    """The api's client certificate for agents, and the CA the agents' certificates come from."""

    certificate: Annotated[FilePath, _why("the api's client certificate for agents (PEM file)")]
    private_key: Annotated[FilePath, _why("the key of agents.tls.certificate (PEM file)")]
    ca: Annotated[FilePath, _why("the CA file (PEM) that issued the agents' certificates")]


class AgentsConfig(_Section, frozen=True):
    """How the api reaches the agents: mutual TLS, each agent's certificate checked against
    ``agents.tls.ca`` and ``server_name`` (not the address dialled)."""

    tls: AgentsTlsConfig
    port: Port = DEFAULT_AGENT_PORT  # the port every agent listens on (its listen.port)
    server_name: NonEmpty = DEFAULT_AGENT_SERVER_NAME  # checked in every agent's certificate
    # seconds the api keeps trying to reach an agent lost mid-capture (an agent restart);
    # the gap is marked with a comment on the first packet after it
    reconnect_grace: Seconds = 30.0

    def _rules(self) -> Iterator[Rule]:
        if not is_host(self.server_name):
            yield "server_name", f"expected a DNS name, got {self.server_name!r}"


ANY_CLIENT = "*"
"""In ``cf.tokens.clients`` / ``bosh.tokens.clients``: any OAuth client (``pcapd.tokens``)."""


def _clients_rule(clients: tuple[str, ...], example: str) -> Iterator[Rule]:
    if not clients:
        yield ("clients", f"empty: no token would be accepted — list the OAuth clients whose "
                          f"tokens the api takes (e.g. [{example}]), or [\"*\"] for any client")
    elif ANY_CLIENT in clients and len(clients) > 1:
        yield ("clients", f"{ANY_CLIENT!r} already accepts every client — list either "
                          "client ids or only \"*\"")


class CfTokensConfig(_Section, frozen=True):
    """Which UAA access tokens the api accepts for Cloud Foundry, on every request (captures,
    renewals, stored captures): the ``cf`` CLI's by default. A token must name one of
    ``audiences`` in its ``aud``, carry one of ``scopes`` and come from one of ``clients``
    (OAuth client ids). Id tokens are always refused."""

    audiences: tuple[NonEmpty, ...] = ("cloud_controller",)  # one must be in the token's aud
    # one of the token's scopes must match one of these (* matches within a scope)
    scopes: tuple[NonEmpty, ...] = ("cloud_controller.read", "cloud_controller.admin",
                                    "cloud_controller.admin_read_only",
                                    "cloud_controller.global_auditor")
    # OAuth client ids whose tokens are accepted: the cf CLI's; add others (a
    # client-credentials login's client) by id, or ["*"] for any client whose token has the
    # audience and a scope above
    clients: tuple[NonEmpty, ...] = ("cf",)

    def _rules(self) -> Iterator[Rule]:
        yield from _clients_rule(self.clients, "cf")


class BoshTokensConfig(_Section, frozen=True):
    """Which UAA access tokens the api accepts for BOSH, on every request (captures, renewals,
    stored captures): the ``bosh`` CLI's by default. A token must name one of ``audiences``
    in its ``aud``, carry one of ``scopes`` and come from one of ``clients`` (OAuth client
    ids). Id tokens are always refused."""

    audiences: tuple[NonEmpty, ...] = ("bosh",)  # one must be in the token's aud
    # one of the token's scopes must match one of these (* matches within a scope)
    scopes: tuple[NonEmpty, ...] = ("bosh.admin", "bosh.read", "bosh.*.admin", "bosh.*.read",
                                    "bosh.teams.*.admin", "bosh.teams.*.read")
    # OAuth client ids whose tokens are accepted: the bosh CLI's; add others (BOSH_CLIENT
    # logins, e.g. [bosh_cli, ci]) by id, or ["*"] for any client whose token has the
    # audience and a scope above
    clients: tuple[NonEmpty, ...] = ("bosh_cli",)

    def _rules(self) -> Iterator[Rule]:
        yield from _clients_rule(self.clients, "bosh_cli")


class CfConfig(_Section, frozen=True):
    """Cloud Foundry: the Cloud Controller that finds apps' instances and says who may see them."""

    api: Url  # UAA is found from the Cloud Controller's root document
    ca: FilePath | None = None  # CA (PEM) of Cloud Controller and UAA; not set: the system's
    # also require `cf ssh` to be allowed for the app (global, space and app flags)
    require_ssh_enabled: bool = False
    tokens: CfTokensConfig = msgspec.field(default_factory=CfTokensConfig)

    def _rules(self) -> Iterator[Rule]:
        yield from _url_rule("api", self.api, "https://api.sys.example.com")


class BoshConfig(_Section, frozen=True):
    """BOSH: the director that finds deployments' VMs and says who may capture them."""

    director: Url  # UAA is found from the director's /info
    ca: FilePath | None = None  # CA (PEM) of the director and its UAA; not set: the system's
    tokens: BoshTokensConfig = msgspec.field(default_factory=BoshTokensConfig)

    def _rules(self) -> Iterator[Rule]:
        yield from _url_rule("director", self.director, "https://10.0.0.6:25555")


UrlExpiry = Annotated[int, Meta(ge=1, le=7 * 86400)]  # seconds; 7 days is S3's presign limit
PartSize = Annotated[int, Meta(ge=5 << 20, le=5 << 30)]  # bytes; S3's multipart part limits
MIN_SECRET_LENGTH = 16


class LocalStorageConfig(_Section, frozen=True, tag="local", tag_field="kind"):
    """Captures on the api VM's disk; a sweeper deletes them after ``retention_days``.

    The api serves them at ``/downloads/<id>`` with links signed by ``download_secret``
    (HMAC); without one it draws a key at start, and links die with the api process.
    """

    path: FilePath  # the directory of stored captures (created if missing)
    retention_days: Count = 7  # days a capture is kept
    url_expiry: UrlExpiry = 3600  # how long a download link works (never past the retention)
    # the key that signs download links, at least 16 characters; the same on every api VM
    download_secret: Secret | None = None

    @property
    def kind(self) -> Literal["local"]:
        return "local"

    def _rules(self) -> Iterator[Rule]:
        secret = self.download_secret
        if secret is not None and len(secret.reveal()) < MIN_SECRET_LENGTH:
            yield (
                "download_secret",
                f"too short (under {MIN_SECRET_LENGTH} characters) — use a long random "
                "string, e.g. the output of `openssl rand -hex 32`",
            )


class S3StorageConfig(_Section, frozen=True, tag="s3", tag_field="kind"):
    """Captures in an S3/MinIO bucket; a bucket lifecycle rule deletes them after retention."""

    endpoint: NonEmpty  # host:port, no scheme: ``secure`` picks https
    bucket: NonEmpty  # created at start if missing
    access_key: NonEmpty  # the S3 access key id
    secret_key: Secret  # its secret key (in BOSH: from CredHub)
    secure: bool = True  # true: https; false: plain http
    region: NonEmpty | None = None  # not set: the SDK asks the server
    retention_days: Count = 7  # days a capture is kept: the bucket's lifecycle rule
    url_expiry: UrlExpiry = 3600  # how long a presigned download link works
    part_size: PartSize = 5 << 20  # multipart part size; an upload holds about 3 in memory

    @property
    def kind(self) -> Literal["s3"]:
        return "s3"

    def _rules(self) -> Iterator[Rule]:
        if "://" in self.endpoint or "/" in self.endpoint:
            yield (
                "endpoint",
                f"expected host:port without scheme or path, got {self.endpoint!r} — "
                "use secure: true/false to choose https or http",
            )
        else:
            host, sep, port = self.endpoint.rpartition(":")
            if not sep or host.endswith(":"):  # no port, or an unbracketed IPv6 address
                host, port = self.endpoint, ""
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
            if not is_host(host) or (port and not (port.isdigit() and 1 <= int(port) <= 65535)):
                yield "endpoint", f"expected host:port, got {self.endpoint!r}"
        if not _BUCKET.fullmatch(self.bucket) or ".." in self.bucket:
            yield (
                "bucket",
                f"{self.bucket!r} is not a valid bucket name — use 3 to 63 lower-case letters, "
                "digits, dots and hyphens, starting and ending with a letter or digit",
            )


StorageConfig = LocalStorageConfig | S3StorageConfig


class ApiLimitsConfig(_Section, frozen=True):
    """Limits per capture, per user and per api, each reported as ``LIMIT_REACHED``; a request
    may ask for a lower duration, packet or byte limit, never a higher one."""

    concurrent_captures_per_user: Count = 5  # captures one user runs at once
    concurrent_captures: Count = 100  # captures this api runs at once, all users together
    max_duration: Seconds = 3600.0  # seconds one capture may run (a request may ask for less)
    max_bytes: Count = 1 << 30  # bytes of packets one capture may write
    max_packets: Count | None = None  # packets one capture may write; not set: no limit
    # capture requests a user may make per minute (a burst of this many, then one per
    # 60/requests_per_minute seconds); queries (status, captures list) do not count
    requests_per_minute: Count = 30
    # seconds a client has from connecting to sending its request and token; a link still
    # without a verified token then is closed (status requests need none, but count)
    authentication_timeout: Seconds = 10.0
    # client links whose token is not verified yet, all together: more are closed at once
    unauthenticated_connections: Count = 256
    # client links whose token is not verified yet from one address (behind gorouter that is
    # a router's address, shared by all its users: allow for the routers' count)
    unauthenticated_connections_per_peer: Count = 32


def _default_rule(default: float, most: float) -> Iterator[Rule]:
    """A request's default must be one it could ask for: ``default <= max``."""
    if default > most:
        shown = [f"{v:.0f}" if v == int(v) else f"{v:g}" for v in (default, most)]
        yield "default", f"must not exceed max ({shown[0]} > {shown[1]}) — lower it or raise max"


class RecorderKeepConfig(_Section, frozen=True):
    """``--keep``: how much recent traffic each instance's ring holds."""

    default: Seconds = 300.0  # seconds kept when a request names none
    max: Seconds = 1800.0  # seconds: the longest --keep a request may ask for

    def _rules(self) -> Iterator[Rule]:
        return _default_rule(self.default, self.max)


class RecorderUntilConfig(_Section, frozen=True):
    """``--until``: how long a recording stays armed before it frees itself."""

    default: Seconds = 28800.0  # seconds a recording runs when a request names none (8 h)
    max: Seconds = 604800.0  # seconds: the longest --until a request may ask for (7 days)

    def _rules(self) -> Iterator[Rule]:
        return _default_rule(self.default, self.max)


class RecorderAfterConfig(_Section, frozen=True):
    """``--after``: how much traffic after a trigger packet its saved window holds."""

    default: NonNegativeSeconds = 30.0  # seconds saved after the trigger when a request names none
    max: NonNegativeSeconds = 300.0  # seconds: the longest --after a request may ask for

    def _rules(self) -> Iterator[Rule]:
        return _default_rule(self.default, self.max)


class RecorderMaxBytesConfig(_Section, frozen=True):
    """``--max-bytes``: the most packet data one instance's ring holds (the oldest packets go
    first); the agents' own recorder budget applies on top."""

    default: Count = 64 << 20  # bytes per instance when a request names none (64 MiB)
    max: Count = 1 << 30  # bytes per instance: the most --max-bytes may ask for (1 GiB)

    def _rules(self) -> Iterator[Rule]:
        return _default_rule(self.default, self.max)


class ApiRecorderConfig(_Section, frozen=True):
    """The flight recorder, ``pcapd record``: what a recording may ask of the agents, and how
    many may be armed. Records of recordings live in ``storage`` (shared by every api VM)."""

    keep: RecorderKeepConfig = msgspec.field(default_factory=RecorderKeepConfig)
    until: RecorderUntilConfig = msgspec.field(default_factory=RecorderUntilConfig)
    after: RecorderAfterConfig = msgspec.field(default_factory=RecorderAfterConfig)
    max_bytes: RecorderMaxBytesConfig = msgspec.field(default_factory=RecorderMaxBytesConfig)
    per_user: Count = 3  # recordings one user may have armed at once; more: LIMIT_REACHED
    total: Count = 50  # recordings armed at once, all users and api VMs together
    # seconds between two triggered saves of one recording: a trigger sooner than this after
    # the last saved one is counted (record list shows it) but saves nothing
    trigger_interval: Seconds = 300.0


class ApiBufferConfig(BufferConfig, frozen=True):
    size: Count = 10000
    upper_limit: Count = 9500
    lower_limit: Count = 8000


class MergeConfig(_Section, frozen=True):
    """The merge of the agents' streams into one timestamp-ordered pcapng."""

    lateness: Seconds = 1.0  # how long the merge waits for a silent stream before moving on


class ApiConfig(_Section, frozen=True):
    """``pcapd api --config FILE`` (SPEC §8). ``cf`` and ``bosh`` are both optional here."""

    id: Annotated[NonEmpty, _why("this api's name in logs and /status, e.g. pcap-api/0")]
    agents: AgentsConfig
    # where captures made with --upload are kept: the api's disk or an S3/MinIO bucket
    storage: StorageConfig
    listen: ApiListenConfig = msgspec.field(default_factory=ApiListenConfig)
    # where users reach this api, e.g. https://pcap.sys.example.com (its route); download
    # links of the local store are built from it, never from the Host a client sent. Not
    # set: the listen address (fine for local mode, not behind gorouter)
    external_url: Url | None = None
    cf: CfConfig | None = None
    bosh: BoshConfig | None = None
    limits: ApiLimitsConfig = msgspec.field(default_factory=ApiLimitsConfig)
    buffer: ApiBufferConfig = msgspec.field(default_factory=ApiBufferConfig)
    merge: MergeConfig = msgspec.field(default_factory=MergeConfig)
    recorder: ApiRecorderConfig = msgspec.field(default_factory=ApiRecorderConfig)
    # seconds running captures get to end gracefully after SIGTERM (a second signal: at once)
    drain_timeout: Seconds = 30.0
    log: LogConfig = msgspec.field(default_factory=LogConfig)

    def _rules(self) -> Iterator[Rule]:
        if self.external_url is not None:
            yield from _url_rule("external_url", self.external_url, "https://pcap.sys.example.com")
