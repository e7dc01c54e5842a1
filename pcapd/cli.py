"""The ``pcapd`` command: one executable, its first word picks the role.

This is the only place that turns errors into exit codes and one-line messages: every
:class:`~pcapd.errors.PcapdError` becomes ``pcapd: error: …`` on stderr and exit status 1;
usage errors and roles that are not built yet exit 2; a capture that misses sources exits 3
(unless ``--allow-partial``); ``merge`` of a damaged input exits 4; SIGINT or SIGTERM before a
capture started exits 130 (docs/user-guide.md#exit-status lists them, held to these by
tests/docs). Nothing
else (a traceback, an ExceptionGroup) ever reaches a person: an error nobody foresaw is one
line too, saying it is a bug.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pcapd import __version__
from pcapd.client.arguments import finish as finish_arguments
from pcapd.client.arguments import parse_duration, parse_size
from pcapd.client.extcap.protocol import add_arguments as add_extcap_arguments
from pcapd.client.extcap.protocol import joined_values
from pcapd.errors import Interrupted, PcapdError, UsageError, collapse
from pcapd.extras import require_server

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
"""The capture ran, but sources pcapd should have captured are missing (docs/user-guide.md)."""
EXIT_INTERRUPTED = 130
"""SIGINT or SIGTERM before the capture started, as a shell reports a Ctrl-C."""

Handler = Callable[[argparse.Namespace], int]


def _add_common_capture_options(parser: argparse.ArgumentParser, default_device: str) -> None:
    """The options every capture target shares (SPEC §8 "common")."""
    parser.add_argument("-i", "--interface", default=default_device, metavar="DEV",
                        help=f"device to capture on (default {default_device})")
    parser.add_argument("-f", "--filter", default="", metavar="BPF",
                        help="BPF filter, as for tcpdump (checked before any agent is contacted); "
                             "or give it as trailing words: ... udp port 53")
    parser.add_argument("-s", "--snaplen", type=int, default=65535, metavar="N",
                        help="bytes to keep of each packet (original lengths are kept); "
                             "0: whole packets")
    parser.add_argument("-w", "--write", default=None, metavar="FILE",
                        help="pcapng file to write ('-' = stdout, e.g. | wireshark -k -i -)")
    parser.add_argument("-c", "--count", type=int, default=None, metavar="N",
                        help="stop after N packets")
    parser.add_argument("--duration", type=parse_duration, default=None, metavar="DURATION",
                        help="stop after this long (seconds, or 30s, 5m, 2h)")
    parser.add_argument("--max-bytes", type=parse_size, default=None, metavar="SIZE",
                        help="stop after this much packet data (bytes, or 500MB, 1GiB)")
    parser.add_argument("--upload", action="store_true",
                        help="store the capture in the bucket and print a download URL")
    parser.add_argument("--api", default=None, metavar="URL",
                        help="pcapd api URL (env PCAPD_API)")
    parser.add_argument("--cacert", default=None, metavar="FILE",
                        help="CA certificate to verify the api with")
    parser.add_argument("-k", "--insecure", action="store_true",
                        help="do not verify the api's TLS certificate")
    parser.add_argument("-q", "--quiet", action="store_true", help="no live progress")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail on stderr")
    parser.add_argument("-n", dest="no_resolve", action="count", default=0,
                        help="accepted as tcpdump takes it (-n, -nn): pcapd never resolves names")
    parser.add_argument("-D", "--list-interfaces", action="store_true",
                        help="list the devices of each source instead of capturing")

    parser.add_argument("-F", "--force", action="store_true",
                        help="overwrite an existing -w FILE")
    parser.add_argument("--allow-partial", action="store_true",
                        help=f"exit 0, not {EXIT_PARTIAL}, when sources are missing")

_CF_LOGIN = (
    "Login, target and space come from the cf CLI ($CF_HOME/.cf/config.json, CF_HOME\n"
    "defaulting to $HOME); an access token about to expire is refreshed and written\n"
    "back. Without --api or PCAPD_API the api is derived from the cf target:\n"
    "https://api.<system domain> -> https://pcap.<system domain>.\n"
    "--cacert and -k/--insecure apply to the pcapd api only; UAA is checked as the\n"
    "cf CLI does (SSLDisabled from 'cf api --skip-ssl-validation').")
_BOSH_LOGIN = (
    "Director and login come from the bosh CLI ($BOSH_CONFIG, default ~/.bosh/config)\n"
    "for environment -e / BOSH_ENVIRONMENT (alias or URL); an access token about to\n"
    "expire is refreshed at the director's UAA and written back. The api needs\n"
    "--api or PCAPD_API. --cacert and -k/--insecure apply to the pcapd api only; the\n"
    "director and UAA are checked with the environment's ca_cert.")


def _add_cf_target(targets: _Targets, what: str, epilog: str = "") -> argparse.ArgumentParser:
    """``cf APP[/INDEX] [--instance N] [--process-type T] [EXPRESSION]``: capture's and
    record start's Cloud Foundry target."""
    cf: argparse.ArgumentParser = targets.add_parser(
        "cf", help=what, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog + _CF_LOGIN)
    cf.add_argument("app", metavar="APP[/INDEX]",
                    help="app name in the targeted space, or app guid; my-app/2: instance 2")
    cf.add_argument("words", nargs="*", metavar="EXPRESSION",
                    help="filter expression, as tcpdump's (instead of -f)")
    cf.add_argument("--instance", action="append", type=int, default=[], metavar="N",
                    help="app instance index (repeatable; default: all instances)")
    cf.add_argument("--process-type", "--process", dest="process_type", default="web",
                    metavar="TYPE", help="process type, as cf ssh --process (default web)")
    return cf


def _add_bosh_target(targets: _Targets, what: str, epilog: str = ""
                     ) -> argparse.ArgumentParser:
    """``bosh -d D -g G [INSTANCE ...] [EXPRESSION]``: capture's and record start's BOSH
    target."""
    bosh: argparse.ArgumentParser = targets.add_parser(
        "bosh", help=what, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog + _BOSH_LOGIN)
    bosh.add_argument("-d", "--deployment", default=None,
                      help="deployment (env BOSH_DEPLOYMENT)")
    bosh.add_argument("-g", "--group", action="append", default=[], metavar="GROUP",
                      help="instance group (repeatable)")
    bosh.add_argument("words", nargs="*", metavar="[GROUP/ID|GROUP/INDEX|INSTANCE_ID] "
                                               "[EXPRESSION]",
                      help="instances (router/0, router/<uuid>, or ids after -g; default: "
                           "every instance of the groups), then a filter expression")
    bosh.add_argument("--instance", dest="instance_ids", action="append", default=[],
                      metavar="ID", help="instance id, index or GROUP/ID (repeatable)")
    bosh.add_argument("-e", "--environment", default=None, metavar="ENV",
                      help="bosh environment alias or URL (env BOSH_ENVIRONMENT)")
    return bosh


class _Given:
    """Mixin of the option actions: note what the user typed; refuse a single value twice."""

    once = False

    def note(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
             option_string: str | None) -> None:
        dest: str = self.dest  # type: ignore[attr-defined]
        typed: dict[str, str] = namespace.__dict__.setdefault("_given", {})
        if option_string is None:
            return
        if self.once and dest in typed and getattr(parser, "single_values", True):
            also = "" if typed[dest] == option_string else f" (also as {typed[dest]})"
            parser.error(f"{option_string} given twice{also}: give it once")
        typed.setdefault(dest, option_string)


class _Store(_Given, argparse._StoreAction):
    once = True

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        self.note(parser, namespace, option_string)
        super().__call__(parser, namespace, values, option_string)


class _StoreTrue(_Given, argparse._StoreTrueAction):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        self.note(parser, namespace, option_string)
        super().__call__(parser, namespace, values, option_string)


class _Append(_Given, argparse._AppendAction):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        self.note(parser, namespace, option_string)
        super().__call__(parser, namespace, values, option_string)


class _VersionFlag(argparse.Action):
    """``pcapd --version``: the same line as ``pcapd version``."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        _version(namespace)
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse as pcapd's users need it: errors in one line naming the flag, a trailing BPF
    expression after options (``capture local -i lo udp port 53``), the dialects of
    :mod:`pcapd.client.arguments` applied before any handler runs."""

    single_values = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", "store", _Store)
        self.register("action", None, _Store)
        self.register("action", "store_true", _StoreTrue)
        self.register("action", "append", _Append)

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        words = getattr(parsed, "words", None)
        unknown = [w for w in extras if w.startswith("-") and w != "-"]
        if extras and (words is None or unknown):
            self.error(f"unrecognized arguments: {' '.join(unknown or extras)}")
        if extras:
            parsed.words = [*(words or []), *extras]
        try:
            finish_arguments(parsed, os.environ)
        except UsageError as exc:
            print(f"pcapd: error: {exc}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        return parsed


if TYPE_CHECKING:
    _Targets = argparse._SubParsersAction[_Parser]  # what add_subparsers() gives


def build_parser() -> argparse.ArgumentParser:
    """The whole command-line interface of SPEC §8; names here are a public contract."""
    parser = _Parser(
        prog="pcapd",
        description="tcpdump for everyone on Cloud Foundry and BOSH: one merged pcapng "
                    "of many app instances or VMs.",
    )
    parser.add_argument("--version", action=_VersionFlag, default=argparse.SUPPRESS)
    roles = parser.add_subparsers(dest="role", metavar="ROLE", required=True)

    for role in ("agent", "api"):
        p = roles.add_parser(role, help=f"run the {role} service")
        p.add_argument("--config", required=True, type=Path, metavar="FILE",
                       help=f"{role} config (YAML)")
        p.add_argument("--check", action="store_true",
                       help="validate the config, print every problem, exit 0 or 1")
        p.set_defaults(handler=_run_agent if role == "agent" else _run_api)

    certs = roles.add_parser("certs", help="development certificates for mutual TLS")
    certs_sub = certs.add_subparsers(dest="certs_command", metavar="COMMAND", required=True)
    init = certs_sub.add_parser("init", help="write a dev CA and agent/api/client certificates")
    init.add_argument("directory", type=Path, metavar="DIR")
    init.add_argument("--agent-host", action="append", default=[], metavar="H",
                      help="extra host name or IP address for the agent certificate")
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    init.set_defaults(handler=_certs_init)

    version = roles.add_parser("version", help="print the version")
    version.add_argument("--require-compiled", action="store_true",
                         help="exit 1 unless the compiled capture and pcapng walker are loaded")
    version.set_defaults(handler=_version)

    capture = roles.add_parser("capture", help="capture traffic into one merged pcapng")
    targets = capture.add_subparsers(dest="target", metavar="TARGET", required=True)
    local = targets.add_parser("local", help="this machine: host interfaces or named netns")
    local.add_argument("--netns", action="append", default=[], metavar="NAME",
                       help="network namespace to capture in (repeatable; default: host)")
    local.add_argument("--agent", action="append", default=[], metavar="ADDR[#NETNS]",
                       help="capture through a running agent instead (repeatable)")
    local.add_argument("--certs", type=Path, default=None, metavar="DIR",
                       help="certificates from 'pcapd certs init' (with --agent)")
    local.add_argument("words", nargs="*", metavar="EXPRESSION",
                       help="filter expression, as tcpdump's (instead of -f)")
    _add_common_capture_options(local, default_device="lo")
    cf = _add_cf_target(targets, "Cloud Foundry app instances")
    _add_common_capture_options(cf, default_device="eth0")
    bosh = _add_bosh_target(targets, "BOSH instances")
    _add_common_capture_options(bosh, default_device="eth0")
    for target in (local, cf, bosh):
        target.set_defaults(handler=_capture)

    captures = roles.add_parser("captures", help="captures stored for you")
    captures_sub = captures.add_subparsers(dest="captures_command", metavar="COMMAND",
                                           required=True)
    listing = captures_sub.add_parser("list", help="your stored captures")
    download = captures_sub.add_parser("download", help="download a stored capture")
    download.add_argument("capture_id", metavar="ID")
    download.add_argument("-w", "--write", default=None, metavar="FILE")
    listing.add_argument("--json", action="store_true",
                         help="one JSON document: raw numbers and times, for scripts")
    listing.add_argument("--no-headers", action="store_true",
                         help="no header line (never printed when stdout is not a terminal)")
    download.add_argument("-F", "--force", action="store_true",
                          help="overwrite an existing -w FILE")
    for p in (listing, download):
        _add_api_options(p, login_choice=True, verbose=False)
        p.set_defaults(handler=_captures)

    _add_record(roles)

    merge = roles.add_parser("merge", help="merge pcap/pcapng files by timestamp, like mergecap")
    merge.add_argument("-w", "--write", required=True, metavar="FILE",
                       help="output pcapng ('-' = stdout)")
    merge.add_argument("-F", "--force", action="store_true",
                       help="overwrite an existing -w FILE")
    merge.add_argument("inputs", nargs="+", metavar="INPUT")
    merge.set_defaults(handler=_merge)

    extcap = roles.add_parser(
        "extcap", help="Wireshark's extcap interface (pcapd in Wireshark's capture list)",
        allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Wireshark calls this itself: link pcapd into its extcap folder (any name; a\n"
               "first argument --extcap-* or --capture implies 'extcap'). See\n"
               "roles/wireshark/README.md.")
    extcap.single_values = False  # Wireshark calls, not a person: no repeat check
    add_extcap_arguments(extcap)
    extcap.set_defaults(handler=_extcap)
    return parser


_RECORD_EPILOG = (
    "A flight recorder: each instance's agent keeps the last --keep of matching packets\n"
    "(at most --max-bytes per instance) until --until has passed or `pcapd record stop ID`.\n"
    "`pcapd record save ID` fetches what is held as one merged pcapng; with --trigger a\n"
    "matching packet saves the window around it into the store by itself (`pcapd captures\n"
    "list` shows it). Start returns at once with the recording's id: nothing needs to stay\n"
    "connected. The api sets the defaults of --max-bytes, --until and --after, and the\n"
    "maximums of all four; it refuses more, naming the limit.\n\n")


def _add_api_options(parser: argparse.ArgumentParser, *, login_choice: bool,
                     verbose: bool = True) -> None:
    """How a client command reaches the api; ``login_choice``: the command names no
    platform, so --bosh picks the bosh CLI's login instead of the cf CLI's."""
    parser.add_argument("--api", default=None, metavar="URL",
                        help="pcapd api URL (env PCAPD_API; for cf derived from the cf target)")
    if login_choice:
        parser.add_argument("--bosh", action="store_true",
                            help="log in with the bosh CLI's session instead of the cf CLI's")
        parser.add_argument("-e", "--environment", default=None, metavar="ENV",
                            help="with --bosh: environment alias or URL (env BOSH_ENVIRONMENT)")
    parser.add_argument("--cacert", default=None, metavar="FILE",
                        help="CA certificate to verify the api with")
    parser.add_argument("-k", "--insecure", action="store_true",
                        help="do not verify the api's TLS certificate")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress")
    if verbose:
        parser.add_argument("-v", "--verbose", action="store_true",
                            help="more detail on stderr")


def _add_recording_options(parser: argparse.ArgumentParser) -> None:
    """What ``record start`` asks the agents to keep (SPEC §8)."""
    parser.add_argument("-i", "--interface", default="eth0", metavar="DEV",
                        help="device to record on (default eth0)")
    parser.add_argument("-f", "--filter", default="", metavar="BPF",
                        help="BPF filter of the packets kept (checked before any agent is "
                             "asked); or give it as trailing words")
    parser.add_argument("-s", "--snaplen", type=int, default=65535, metavar="N",
                        help="bytes to keep of each packet; 0: whole packets")
    parser.add_argument("--keep", type=parse_duration, default=None, metavar="DURATION",
                        help="required: how much recent traffic each instance holds, e.g. "
                             "10m (older packets age out)")
    parser.add_argument("--max-bytes", type=parse_size, default=None, metavar="SIZE",
                        help="the most each instance holds, e.g. 256MB (the oldest packets go "
                             "first; default: the api's)")
    parser.add_argument("--until", type=parse_duration, default=None, metavar="DURATION",
                        help="stop recording after this long, e.g. 24h (default: the api's)")
    parser.add_argument("--trigger", default=None, metavar="BPF",
                        help="a packet matching this filter on any instance saves the window "
                             "around it into the store (e.g. 'tcp[tcpflags] & tcp-rst != 0')")
    parser.add_argument("--after", type=parse_duration, default=None, metavar="DURATION",
                        help="with --trigger: how much after the trigger packet the saved "
                             "window holds (default: the api's, e.g. 30s)")
    parser.add_argument("--once", action="store_true",
                        help="with --trigger: save the first trigger's window, then stop")
    _add_api_options(parser, login_choice=False)


def _add_record(roles: _Targets) -> None:
    """``pcapd record start|list|save|stop`` (issue 17)."""
    record = roles.add_parser(
        "record", help="flight recorder: keep the last minutes on the agents, save them later",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_RECORD_EPILOG)
    commands = record.add_subparsers(dest="record_command", metavar="COMMAND", required=True)
    start = commands.add_parser(
        "start", help="arm a recording on app instances or BOSH VMs; prints its id",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_RECORD_EPILOG)
    targets = start.add_subparsers(dest="target", metavar="TARGET", required=True)
    example = ("Example: pcapd record start cf my-app --keep 10m --until 24h \\\n"
               "           --trigger 'tcp[tcpflags] & tcp-rst != 0' --after 30s port 8080\n\n")
    cf = _add_cf_target(targets, "Cloud Foundry app instances", _RECORD_EPILOG + example)
    _add_recording_options(cf)
    bosh = _add_bosh_target(targets, "BOSH instances", _RECORD_EPILOG)
    _add_recording_options(bosh)

    listing = commands.add_parser("list", help="your recordings: id, target, window held, "
                                               "size, triggers fired, when each ends")
    listing.add_argument("--json", action="store_true",
                         help="one JSON document: raw numbers and times, for scripts")
    listing.add_argument("--no-headers", action="store_true",
                         help="no header line (never printed when stdout is not a terminal)")
    save = commands.add_parser(
        "save", help="one merged pcapng of what a recording holds now",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The token and the permission are checked again: a user who lost access to\n"
               "the target gets nothing. Instances that are gone are reported as in a capture.")
    save.add_argument("recording_id", metavar="ID",
                      help="the recording's id, or a unique start of it (pcapd record list)")
    save.add_argument("--last", type=parse_duration, default=None, metavar="DURATION",
                      help="only the last DURATION of what is held, e.g. 5m (default: all)")
    save.add_argument("-w", "--write", default=None, metavar="FILE",
                      help="pcapng file to write ('-' = stdout)")
    save.add_argument("--upload", action="store_true",
                      help="into the store instead (pcapd captures list shows it)")
    save.add_argument("-F", "--force", action="store_true",
                      help="overwrite an existing -w FILE")
    stop = commands.add_parser("stop", help="stop a recording and free its rings at once")
    stop.add_argument("recording_id", metavar="ID",
                      help="the recording's id, or a unique start of it (pcapd record list)")
    for command in (listing, save, stop):
        _add_api_options(command, login_choice=True)
    for parser in (cf, bosh, listing, save, stop):
        parser.set_defaults(handler=_record)


def _version(args: argparse.Namespace) -> int:
    from pcapd import _accel
    from pcapd.proto import MIN_COMPATIBLE_VERSION, PROTOCOL_VERSION

    print(f"pcapd {__version__} (protocol {PROTOCOL_VERSION}, "
          f"accepts {MIN_COMPATIBLE_VERSION}–{PROTOCOL_VERSION})")
    print(_accel.describe())
    if getattr(args, "require_compiled", False) and not _accel.complete():
        print("pcapd: the compiled core is required here (--require-compiled) but is not loaded: "
              "reinstall pcapd where gcc, libpcap's and Python's headers are present (the BOSH "
              "package builds it on the compilation VM), and do not set "
              f"{_accel.DISABLE_ENV}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _check_config(role: str, path: Path) -> int:
    from pcapd import config

    check = config.check_agent_config_file if role == "agent" else config.check_api_config_file
    result = check(path)
    for warning in result.warnings:
        print(f"{path}: warning: {warning}", file=sys.stderr)
    for problem in result.problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if not result.ok:
        return EXIT_FAILED
    print(f"{path}: ok ({role} config)")
    return EXIT_OK


def _config_problems(role: str, path: Path) -> bool:
    """When a service failed to start: every problem ``--check`` finds, one line each (naming
    the key and the path) on stderr — what lands in the job's log. True if there were any."""
    from pcapd import config

    check = config.check_agent_config_file if role == "agent" else config.check_api_config_file
    result = check(path)
    for problem in result.problems:
        print(f"pcapd: error: {path}: {problem}", file=sys.stderr)
    return not result.ok


def _run_agent(args: argparse.Namespace) -> int:
    require_server("agent")
    if args.check:
        return _check_config("agent", args.config)
    import trio

    from pcapd import logs
    from pcapd.agent.main import run_agent
    from pcapd.config import load_agent_config

    config = load_agent_config(args.config)
    logs.configure(config.log.level, config.log.format)
    try:
        trio.run(run_agent, config)
    except PcapdError:
        if _config_problems("agent", args.config):  # (a missing key file, say) in its words
            return EXIT_FAILED
        raise
    return EXIT_OK


def _run_api(args: argparse.Namespace) -> int:
    require_server("api")
    if args.check:
        return _check_config("api", args.config)
    import trio

    from pcapd import logs
    from pcapd.api.main import platform_resolver, run_api
    from pcapd.config import load_api_config
    from pcapd.store import open_store

    config = load_api_config(args.config)
    logs.configure(config.log.level, config.log.format)
    try:
        trio.run(run_api, config, platform_resolver(config), open_store(config.storage))
    except PcapdError:
        if _config_problems("api", args.config):
            return EXIT_FAILED
        raise
    return EXIT_OK


def _certs_init(args: argparse.Namespace) -> int:
    require_server("certs")
    from pcapd.certs import init_certs

    paths = init_certs(args.directory, args.agent_host, force=args.force)
    print(f"wrote certificates to {paths.directory}", file=sys.stderr)
    return EXIT_OK


def _capture(args: argparse.Namespace) -> int:
    import trio

    from pcapd import logs

    logs.configure("info" if args.verbose else "warning", "text")
    if args.list_interfaces:
        return _list_devices(args)
    if args.target == "local":
        require_server("capture local")
        from pcapd.client.local import capture_local, local_plan

        with local_plan(args) as plan:
            end = trio.run(capture_local, plan)
    else:
        from pcapd.client.remote import capture_remote, remote_plan

        with remote_plan(args) as remote:
            end = trio.run(capture_remote, remote)
    if end.reason == "failed":
        return EXIT_FAILED
    from pcapd.client.progress import is_partial

    return EXIT_PARTIAL if is_partial(end) and not args.allow_partial else EXIT_OK


def _list_devices(args: argparse.Namespace) -> int:
    from pcapd.client.devices import device_lines, local_devices, remote_devices

    if args.target == "local":
        require_server("capture local")
    listing = local_devices(args.netns) if args.target == "local" else remote_devices(args)
    for line in device_lines(listing):
        print(line)
    return EXIT_OK


def _record(args: argparse.Namespace) -> int:
    import trio

    from pcapd import logs
    from pcapd.client.record import record_plan, run_record_command

    logs.configure("info" if args.verbose else "warning", "text")
    with record_plan(args) as plan:
        return trio.run(run_record_command, plan)


def _captures(args: argparse.Namespace) -> int:
    import trio

    from pcapd.client.captures import captures_plan, run_captures_command

    with captures_plan(args) as plan:
        trio.run(run_captures_command, plan)
    return EXIT_OK


EXIT_DAMAGED_INPUT = 4
"""``pcapd merge``: merged, but an input was read only up to damage (see the user guide)."""


def _merge(args: argparse.Namespace) -> int:
    from pcapd.client.output import check_target
    from pcapd.merge.files import merge_files

    check_target(args.write, force=args.force)
    result = merge_files(args.inputs, args.write)
    for problem in (*result.skipped_sections, *result.damaged):
        print(f"pcapd: warning: {problem}", file=sys.stderr)
    notes = []
    if result.reordered:
        notes.append(f"{result.reordered} packets out of time order, as in their own file")
    if result.skipped_blocks:
        notes.append(f"{result.skipped_blocks} blocks of kinds pcapd does not copy skipped")
    target = "stdout" if args.write == "-" else args.write
    print(f"merged {result.packets} packets from {len(args.inputs)} files "
          f"({result.interfaces} interfaces) into {target}"
          + "".join(f"; {note}" for note in notes), file=sys.stderr)
    return EXIT_DAMAGED_INPUT if result.damaged else EXIT_OK


def _extcap(args: argparse.Namespace) -> int:
    from pcapd.client.extcap.answer import run_extcap

    return run_extcap(args, lambda argv: _capture(build_parser().parse_args(argv)),
                      build_parser().parse_args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pcapd`` console script; returns the exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words and (words[0].startswith("--extcap-") or words[0] == "--capture"):
        words.insert(0, "extcap")  # Wireshark runs a link to pcapd in its extcap folder
    if words and words[0] == "extcap":
        words[1:] = joined_values(words[1:])
    args = build_parser().parse_args(words)
    handler: Handler = args.handler
    if args.role not in ("agent", "api"):
        _interrupt_on_signals()
    try:
        with collapse():
            return handler(args)
    except UsageError as exc:
        print(f"pcapd: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PcapdError as exc:
        print(f"pcapd: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        _quiet_stdout()  # `pcapd captures list | head`: the reader has all it wanted
        return EXIT_OK
    except (KeyboardInterrupt, Interrupted):
        print("pcapd: interrupted before the capture started: nothing was written"
              if args.role in ("capture", "extcap") else "pcapd: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the last line of defence: no traceback, ever
        if os.environ.get("PCAPD_TRACEBACK"):
            traceback.print_exc()
        print(f"pcapd: internal error (a bug in pcapd {__version__}: please report it with "
              f"the command you ran; PCAPD_TRACEBACK=1 shows the traceback): "
              f"{type(exc).__name__}: {exc}"[:1000], file=sys.stderr)
        return EXIT_FAILED


def _interrupt_on_signals() -> None:
    """SIGINT and SIGTERM end a client command at once in its blocking phases (reading the
    login, refreshing a token at UAA), even when pcapd was started with SIGINT ignored (a
    background job of a script); inside the event loop a capture watches them itself."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)


def _quiet_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
