"""``pcapd capture cf`` and ``pcapd capture bosh``: a capture through a pcapd api.

Everything blocking happens in :func:`remote_plan`, before ``trio.run``: the cf or bosh CLI's
config is read, the api's address worked out, the output opened, and an access token about to
expire refreshed at UAA (and written back). :func:`capture_remote` then runs the capture as local
mode does — same output, progress and exit codes — with the token in the WebSocket handshake and
a task that keeps it fresh while the capture runs.

The api's address is ``--api`` or ``$PCAPD_API``; for cf, without either, it is derived from the
cf target: ``https://api.<system domain>`` → ``https://pcap.<system domain>``. ``https://`` and
``http://`` become ``wss://`` and ``ws://`` (ports 443 and 80 unless given); ``wss://`` and
``ws://`` are taken as they are. ``--cacert`` and ``-k`` apply to that api connection only:
UAA and the director are checked as the cf and bosh CLIs check them (cf: ``SSLDisabled``;
bosh: the environment's ``ca_cert``).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import jwt

from pcapd.client.boshcli import (
    BoshCredentials,
    bosh_config_path,
    bosh_credentials,
)
from pcapd.client.capture import ApiAddress, run_capture
from pcapd.client.cfcli import (
    CfCredentials,
    cf_config_path,
    derive_api_url,
    load_cf_config,
    space_for,
)
from pcapd.client.credentials import Credentials
from pcapd.client.output import PcapngOutput
from pcapd.client.plan import capture_request, opened_output
from pcapd.client.progress import Header, Progress
from pcapd.errors import UsageError
from pcapd.proto import BoshTarget, CfTarget, End, Start
from pcapd.proto.messages import Target
from pcapd.transport.tls import TlsSetupError, client_context
from pcapd.urls import origin, split_url

API_ENV = "PCAPD_API"
_SCHEMES = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}
_PORTS = {"wss": 443, "ws": 80}


def websocket_url(url: str) -> str:
    """The WebSocket URL of a pcapd api given as ``https://…``, ``http://…``, ``wss://…``,
    ``ws://…`` or a bare host (https): ``https://pcap.sys.example.com`` →
    ``wss://pcap.sys.example.com:443/``."""
    scheme, host, port, resource = _parse_api_url(url)
    return origin(scheme, host, port) + resource


def _parse_api_url(url: str) -> tuple[str, str, int, str]:
    try:
        parts = split_url(url)
        port = parts.port
    except ValueError:
        raise UsageError(f"--api {url}: not a URL (e.g. https://pcap.sys.example.com)") from None
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise UsageError(f"--api {url}: scheme {parts.scheme!r} is not one of https, http, "
                         "wss, ws")
    if not parts.hostname:
        raise UsageError(f"--api {url}: no host (e.g. https://pcap.sys.example.com)")
    resource = parts.path or "/"
    if parts.query:
        resource += f"?{parts.query}"
    return scheme, parts.hostname, _PORTS[scheme] if port is None else port, resource


def api_address(url: str, *, cacert: str | None = None, insecure: bool = False,
                origin: str = "") -> ApiAddress:
    """Where to dial the api, and how to check its certificate (``--cacert``, ``-k``);
    ``origin`` says where the URL came from, for messages."""
    scheme, host, port, resource = _parse_api_url(url)
    if scheme == "ws":
        return ApiAddress(host, port, resource, url=url, origin=origin)
    if cacert is not None and not Path(cacert).is_file():
        raise UsageError(f"--cacert {cacert}: no such file")
    try:
        context = client_context(ca=cacert, insecure=insecure, what="--cacert")
    except TlsSetupError:
        raise UsageError(f"--cacert {cacert}: not a CA certificate in PEM form") from None
    return ApiAddress(host, port, resource, ssl_context=context, server_hostname=host, url=url,
                      origin=origin)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn(text: str) -> None:
    print(f"pcapd: warning: {text}", file=sys.stderr)


def say(text: str) -> None:
    """A line of what pcapd does now, on stderr at once (not with ``-q``: see ``announce``)."""
    print(text, file=sys.stderr, flush=True)


def refresh_login(credentials: Credentials, args: argparse.Namespace) -> None:
    """Refresh a token about to expire (blocking), saying first where (not with ``-q``): with
    a UAA that hangs the user sees what pcapd waits for, and a signal ends it (exit 130)."""
    credentials.ensure_fresh(time.time(),
                             announce=None if getattr(args, "quiet", False) else say)


def choose_api_url(args: argparse.Namespace, derived: str | None, why_not: str) -> str:
    """``--api``, else ``$PCAPD_API``, else ``derived``; else a UsageError saying what to pass."""
    url = args.api or os.environ.get(API_ENV) or derived
    if not url:
        raise UsageError(f"which pcapd api? pass --api URL or set {API_ENV} "
                         f"(e.g. https://pcap.sys.example.com){why_not}")
    return str(url)


def api_origin(args: argparse.Namespace) -> str:
    """Where :func:`choose_api_url` found the api: shown as ``connecting to URL (from …)``."""
    if args.api:
        return "--api"
    return API_ENV if os.environ.get(API_ENV) else "your cf target"


def token_user(token: str) -> str:
    """Who the access token speaks for (``user_name``, or the client of a client-credentials
    token): only to tell the user whose login pcapd uses; the api verifies the token."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return "an unreadable login"
    name = claims.get("user_name") or claims.get("client_id") or claims.get("sub")
    shown = "".join(c for c in str(name)[:100] if c.isprintable()) if name else ""
    return shown or "an unnamed login"


@dataclass(frozen=True)
class RemotePlan:
    """Everything a cf or bosh capture prepares before the event loop starts."""

    args: argparse.Namespace
    start: Start
    output: PcapngOutput
    api: ApiAddress
    credentials: Credentials
    where: str
    """``org/space`` or ``environment lab (https://10.0.0.6:25555)``: whose login, for the
    ``connecting to …`` line."""


def _cf(args: argparse.Namespace) -> tuple[Credentials, Target, str]:
    negative = [n for n in args.instance if n < 0]
    if negative:
        raise UsageError(f"--instance {negative[0]}: an instance index is 0 or more")
    config = load_cf_config(cf_config_path())
    target = CfTarget(app=args.app, space=space_for(config, args.app),
                      instances=list(args.instance), process_type=args.process_type)
    derived = derive_api_url(config.target)
    why_not = "" if derived else (f"; it is derived as https://pcap.<system domain> only from a "
                                  f"cf target https://api.<system domain>, not {config.target}")
    url = choose_api_url(args, derived, why_not)
    return CfCredentials(config), target, url


def _bosh(args: argparse.Namespace, stack: ExitStack) -> tuple[Credentials, Target, str]:
    credentials = bosh_credentials(bosh_config_path(),
                                   args.environment or os.environ.get("BOSH_ENVIRONMENT"))
    stack.callback(credentials.close)
    target = BoshTarget(deployment=args.deployment, groups=list(args.group),
                        instances=list(args.instance_ids))
    return credentials, target, choose_api_url(args, None, "")


def login_and_target(args: argparse.Namespace,
                     stack: ExitStack) -> tuple[Credentials, Target, str]:
    """The CLI login, the target and the api URL of ``capture cf|bosh`` (blocking)."""
    return _cf(args) if args.target == "cf" else _bosh(args, stack)


@contextmanager
def remote_plan(args: argparse.Namespace) -> Iterator[RemotePlan]:
    """Read the CLI's login, check the flags, open the output, refresh a token about to expire.

    Blocking work (files, UAA) happens here, before ``trio.run``; an output file that received
    nothing is removed again if the capture fails.
    """
    with ExitStack() as stack:
        if args.target == "cf":
            credentials, target, url = _cf(args)
        else:
            credentials, target, url = _bosh(args, stack)
        start = capture_request(args, target)
        api = api_address(url, cacert=args.cacert, insecure=args.insecure,
                          origin=api_origin(args))
        if api.ssl_context is None and not _is_loopback(api.host):
            _warn(f"{websocket_url(url)} is not TLS: your access token travels in clear text")
        elif api.ssl_context is not None and args.insecure:
            _warn(f"-k/--insecure: not verifying the TLS certificate of {websocket_url(url)}")
        output = stack.enter_context(opened_output(args.write, args.upload, args.force))
        if isinstance(credentials, CfCredentials):
            where = f"{credentials.config.org_name}/{credentials.config.space_name}"
        elif isinstance(credentials, BoshCredentials):
            where = (f"bosh environment {credentials.environment.name} "
                     f"({credentials.environment.url})")
        else:
            where = "?"
        refresh_login(credentials, args)
        plan = RemotePlan(args, start, output, api, credentials, where)
        if not args.quiet:  # before anything is sent to the api
            print(connecting_line(plan), file=sys.stderr, flush=True)
        yield plan


def connecting_line(plan: RemotePlan) -> str:
    """Where pcapd connects and as whom, printed before it does (the first thing to check
    when nothing happens: the wrong api, the wrong login, the wrong space)."""
    origin = f" (from {plan.api.origin})" if plan.api.origin else ""
    user = token_user(plan.credentials.tokens.access_token)
    return f"connecting to {plan.api.shown}{origin} as {user}, {plan.where}"


async def capture_remote(plan: RemotePlan) -> End:
    """Run ``pcapd capture cf|bosh`` as planned; returns the api's ``end``."""
    authorization = plan.credentials.tokens.authorization.encode()
    header = Header.of(plan.start, f"{plan.api.host}:{plan.api.port}", plan.output.target)
    with Progress(quiet=plan.args.quiet, header=header,
                  notes=getattr(plan.output, "notes", None)) as progress:
        end = await run_capture(plan.api, plan.start, plan.output, progress,
                                extra_headers=[(b"authorization", authorization)],
                                token_source=plan.credentials)
    progress.end(end, plan.output.target)
    return end
