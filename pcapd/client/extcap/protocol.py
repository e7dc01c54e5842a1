"""Wireshark's extcap protocol, pure: pcapd's interfaces and their options, the sentences that
describe them, and the translation of an extcap call into a ``pcapd capture`` command line.

No I/O and no Trio (``pcapd.cli`` builds its parser from it); the package's docstring has the
theory of operation, :mod:`pcapd.client.extcap.answer` the side that answers and captures.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from pcapd import __version__
from pcapd.errors import UsageError

ARG_TYPES = frozenset({"integer", "unsigned", "long", "double", "string", "password",
                       "boolean", "boolflag", "fileselect", "selector", "radio", "multicheck",
                       "timestamp"})
_UNSAFE = re.compile(r"[{}\r\n]")


@dataclass(frozen=True)
class Arg:
    """One option in Wireshark's capture dialog, and the flag Wireshark passes for it."""

    call: str
    display: str
    type: str
    tooltip: str
    required: bool = False
    default: str | None = None
    range: str | None = None
    validation: str | None = None
    mustexist: bool = False
    group: str | None = None
    reload: bool = False
    """A selector whose values Wireshark asks for again (``--extcap-reload-option``)."""
    placeholder: str | None = None
    values: tuple[tuple[str, str], ...] = ()
    """A selector's values before any reload: (value, what the dialog shows)."""

    @property
    def dest(self) -> str:
        return self.call.removeprefix("--").replace("-", "_")

    def fields(self, number: int) -> list[tuple[str, str]]:
        fields = [("number", str(number)), ("call", self.call), ("display", self.display),
                  ("type", self.type), ("tooltip", self.tooltip)]
        for key in ("default", "range", "validation"):
            value = getattr(self, key)
            if value is not None:
                fields.append((key, value))
        if self.required:
            fields.append(("required", "true"))
        if self.mustexist:
            fields.append(("mustexist", "true"))
        if self.reload:
            fields.append(("reload", "true"))
        if self.placeholder:
            fields.append(("placeholder", self.placeholder))
        if self.group:
            fields.append(("group", self.group))
        return fields


@dataclass(frozen=True)
class Interface:
    """An extcap interface: one pcapd capture target."""

    value: str
    display: str
    target: str
    args: tuple[Arg, ...]

    def arg(self, dest: str) -> Arg | None:
        return next((a for a in self.args if a.dest == dest), None)


def _device(default: str, where: str, values: tuple[tuple[str, str], ...]) -> Arg:
    return Arg("--device", "Device", "selector", f"Network device to capture ({where}); "
               "reload: the devices the sources have", default=default, group="Capture",
               reload=True, placeholder="Load the devices", values=values)


_PLATFORM_DEVICES = (("eth0", "eth0"), ("lo", "lo"))
_CF_DEVICES = (("eth0", "eth0: gorouter's TLS to envoy (port 61001), outbound traffic"),
               ("lo", "lo: the plain hop to the app's port"))


_SNAPLEN = Arg("--snaplen", "Snapshot length", "unsigned",
               "Bytes to keep of each packet (original lengths are kept)",
               default="65535", range="1,262144", group="Capture")
_CACERT = Arg("--cacert", "CA certificate", "fileselect",
              "CA certificate (PEM) to verify the pcapd api with; empty: the system's CAs",
              mustexist=True, group="Connection")
_INSECURE = Arg("--insecure", "Do not verify the api's TLS certificate", "boolflag",
                "Like curl -k: for test installations only", group="Connection")
_LOG_FILE = Arg("--log-file", "Log file", "fileselect",
                "Where pcapd writes its progress and messages (appended); without it "
                "Wireshark shows only errors", group="Debug")
_LIST = r"^[A-Za-z0-9_.:/ ,-]*$"

CF = Interface("pcapd-cf", "pcapd: Cloud Foundry app", "cf", (
    Arg("--app", "App", "selector",
        "App in the org and space targeted with the cf CLI (reload lists them)",
        required=True, group="Target", reload=True, placeholder="Load the space's apps"),
    Arg("--instances", "Instances", "selector",
        "Instance index; all: every instance (reload lists the app's instances)",
        default="", group="Target", reload=True, placeholder="Load the app's instances",
        values=(("", "all instances"),)),
    Arg("--process-type", "Process type", "string", "Process type of the app instances",
        default="web", group="Target"),
    _device("eth0", "in each app container: eth0 carries gorouter's TLS to envoy, lo the "
            "plain hop to the app's port", _CF_DEVICES),
    _SNAPLEN,
    Arg("--api", "pcapd api", "string",
        "URL of the pcapd api, e.g. https://pcap.sys.example.com; empty: $PCAPD_API, else "
        "derived from the cf target (api.DOMAIN becomes pcap.DOMAIN)", group="Connection"),
    _CACERT, _INSECURE, _LOG_FILE,
))
BOSH = Interface("pcapd-bosh", "pcapd: BOSH instances", "bosh", (
    Arg("--deployment", "Deployment", "string", "BOSH deployment name", required=True,
        group="Target"),
    Arg("--groups", "Instance groups", "string",
        "Instance groups, comma-separated (e.g. router,diego-cell)", required=True,
        validation=_LIST, group="Target"),
    Arg("--instance-ids", "Instance ids", "string",
        "Instance ids, comma-separated; empty: every instance of the groups",
        validation=_LIST, group="Target"),
    Arg("--environment", "Environment", "string",
        "bosh environment alias or director URL; empty: $BOSH_ENVIRONMENT", group="Target"),
    _device("eth0", "on each VM", _PLATFORM_DEVICES),
    _SNAPLEN,
    Arg("--api", "pcapd api", "string",
        "URL of the pcapd api, e.g. https://pcap.sys.example.com; empty: $PCAPD_API",
        group="Connection"),
    _CACERT, _INSECURE, _LOG_FILE,
))
LOCAL = Interface("pcapd-local", "pcapd: this machine (network namespaces)", "local", (
    Arg("--netns", "Network namespaces", "string",
        "Names of 'ip netns' namespaces, comma-separated; empty: the host's own. "
        "Needs root (or CAP_NET_RAW and CAP_SYS_ADMIN)", validation=_LIST, group="Target"),
    _device("lo", "in each namespace", (("lo", "lo"),)),
    _SNAPLEN, _LOG_FILE,
))
INTERFACES = (CF, BOSH, LOCAL)
DLT = "dlt {number=1}{name=EN10MB}{display=Ethernet}"


def _sentence(kind: str, fields: list[tuple[str, str]]) -> str:
    for key, value in fields:
        if _UNSAFE.search(value):
            raise ValueError(f"{kind} {key}={value!r}: braces and line breaks break the grammar")
    return kind + " " + "".join(f"{{{key}={value}}}" for key, value in fields)


def interface_named(name: str | None) -> Interface:
    for interface in INTERFACES:
        if interface.value == name:
            return interface
    names = ", ".join(i.value for i in INTERFACES)
    raise UsageError(f"--extcap-interface {name}: not one of pcapd's interfaces ({names})"
                     if name else f"--extcap-interface: name one of {names}")


def version_sentence() -> str:
    return _sentence("extcap", [("version", __version__)])


def interfaces_sentences() -> list[str]:
    """Answer to ``--extcap-interfaces``."""
    return [version_sentence()] + [
        _sentence("interface", [("value", i.value), ("display", i.display)]) for i in INTERFACES]


def dlts_sentences(interface: Interface) -> list[str]:
    """Answer to ``--extcap-dlts``."""
    return [DLT]


def config_sentences(interface: Interface) -> list[str]:
    """Answer to ``--extcap-config``: the capture dialog's options, in order, each selector
    followed by its values."""
    lines = []
    for n, arg in enumerate(interface.args):
        lines.append(_sentence("arg", arg.fields(n)))
        lines.extend(value_sentences(interface, arg, list(arg.values)))
    return lines


def reloadable(interface: Interface, option: str | None) -> Arg:
    """The selector named by ``--extcap-reload-option`` (``app`` or ``--app``)."""
    name = (option or "").lstrip("-").replace("-", "_")
    arg = interface.arg(name)
    if arg is None or not arg.reload:
        names = ", ".join(a.call for a in interface.args if a.reload)
        raise UsageError(f"--extcap-reload-option {option}: {interface.value} reloads "
                         f"{names}")
    return arg


def value_sentences(interface: Interface, arg: Arg, values: list[tuple[str, str]]) -> list[str]:
    """The ``value`` lines of selector ``arg``, its default marked."""
    number = interface.args.index(arg)
    lines = []
    for value, display in values:
        fields = [("arg", str(number)), ("value", value), ("display", display)]
        if value == (arg.default or ""):
            fields.append(("default", "true"))
        lines.append(_sentence("value", fields))
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags Wireshark passes, and every option any interface offers."""
    proto = parser.add_argument_group("extcap protocol (as Wireshark calls it)")
    proto.add_argument("--extcap-interfaces", action="store_true",
                       help="list the interfaces (pcapd-cf, pcapd-bosh, pcapd-local)")
    proto.add_argument("--extcap-version", nargs="?", const="", default=None,
                       metavar="WIRESHARK_VERSION", help="Wireshark's version (ignored)")
    proto.add_argument("--extcap-interface", default=None, metavar="INTERFACE",
                       help="the interface asked about or captured on")
    proto.add_argument("--extcap-dlts", action="store_true", help="the interface's link type")
    proto.add_argument("--extcap-config", action="store_true",
                       help="the interface's options, for the capture dialog")
    proto.add_argument("--extcap-reload-option", default=None, metavar="OPTION",
                       help="with --extcap-config: the values of one selector (app, "
                            "instances, device)")
    proto.add_argument("--extcap-capture-filter", default=None, metavar="BPF",
                       help="the capture filter; without --capture: check it")
    proto.add_argument("--capture", action="store_true", help="capture into --fifo")
    proto.add_argument("--fifo", default=None, metavar="PATH",
                       help="where the pcapng goes (Wireshark's fifo)")
    for flag in ("--extcap-control-in", "--extcap-control-out"):
        proto.add_argument(flag, default=None, metavar="PATH", help=argparse.SUPPRESS)
    options = parser.add_argument_group("interface options (see --extcap-config)")
    seen: set[str] = set()
    for interface in INTERFACES:
        for arg in interface.args:
            if arg.call in seen:
                continue
            seen.add(arg.call)
            if arg.type == "boolflag":
                options.add_argument(arg.call, action="store_true", default=None,
                                     help=arg.tooltip)
            elif arg.type == "unsigned":
                options.add_argument(arg.call, type=int, default=None, metavar="N",
                                     help=arg.tooltip)
            else:
                options.add_argument(arg.call, default=None, metavar="VALUE", help=arg.tooltip)


_VALUE_FLAGS = frozenset(
    {"--extcap-interface", "--extcap-reload-option", "--extcap-capture-filter", "--fifo",
     "--extcap-control-in", "--extcap-control-out"}
    | {arg.call for interface in INTERFACES for arg in interface.args if arg.type != "boolflag"})


def joined_values(argv: list[str]) -> list[str]:
    """Wireshark passes ``--app VALUE`` as two words; make it ``--app=VALUE``, so that a value
    starting with ``-`` (an app named ``-x``) is not taken for a flag."""
    out: list[str] = []
    words = iter(argv)
    for word in words:
        value = next(words, None) if word in _VALUE_FLAGS else None
        out.append(word if value is None else f"{word}={value}")
    return out


def _items(text: str | None) -> list[str]:
    """``"a, b c"`` → ``["a", "b", "c"]``."""
    return [item for item in re.split(r"[\s,]+", text or "") if item]


def _value(args: argparse.Namespace, interface: Interface, dest: str) -> str:
    arg = interface.arg(dest)
    assert arg is not None, dest
    value = getattr(args, dest, None)
    if value is None or value == "":
        value = arg.default or ""
    if arg.required and not str(value).strip():
        raise UsageError(f"{arg.call} ({arg.display}) is required for {interface.value}: "
                         f"{arg.tooltip}")
    return str(value)


def _check_options(args: argparse.Namespace, interface: Interface) -> None:
    for other in INTERFACES:
        for arg in other.args:
            if interface.arg(arg.dest) is None and getattr(args, arg.dest, None) not in (None, ""):
                raise UsageError(f"{arg.call} is not an option of {interface.value} "
                                 f"(see --extcap-config --extcap-interface {interface.value})")


def capture_command(args: argparse.Namespace) -> list[str]:
    """The ``pcapd capture …`` command line (without ``pcapd``) for a ``--capture`` call.

    Every value goes in ``--flag=value`` form, and positionals after ``--``, so no value (an
    app named ``-x``, a filter starting with ``-``) is taken for a flag.
    """
    interface = interface_named(args.extcap_interface)
    if not args.fifo:
        raise UsageError("--capture needs --fifo PATH (where Wireshark reads the packets)")
    _check_options(args, interface)
    common = [f"--interface={_value(args, interface, 'device')}",
              f"--snaplen={_value(args, interface, 'snaplen')}",
              f"--filter={args.extcap_capture_filter or ''}",
              f"--write={args.fifo}", "--quiet"]
    return _command(args, interface, common)


def devices_command(args: argparse.Namespace) -> list[str]:
    """``pcapd capture … -D`` for the dialog's target: what the device selector reloads."""
    interface = interface_named(args.extcap_interface)
    _check_options(args, interface)
    return _command(args, interface, ["--list-interfaces"])


def _command(args: argparse.Namespace, interface: Interface, common: list[str]) -> list[str]:
    if interface is LOCAL:
        netns = [f"--netns={name}" for name in _items(_value(args, interface, "netns"))]
        return ["capture", "local", *netns, *common]
    connection = []
    if _value(args, interface, "api"):
        connection.append(f"--api={_value(args, interface, 'api')}")
    if _value(args, interface, "cacert"):
        connection.append(f"--cacert={_value(args, interface, 'cacert')}")
    if args.insecure:
        connection.append("--insecure")
    if interface is CF:
        instances = []
        for item in _items(_value(args, interface, "instances")):
            if not item.isdigit():
                raise UsageError(f"--instances {args.instances}: instance indices are "
                                 "numbers, comma-separated (e.g. 0,2)")
            instances.append(f"--instance={int(item)}")
        return ["capture", "cf", *instances,
                f"--process-type={_value(args, interface, 'process_type')}",
                *common, *connection, "--", _value(args, interface, "app")]
    groups = [f"--group={group}" for group in _items(_value(args, interface, "groups"))]
    if not groups:
        raise UsageError("--groups: name at least one instance group")
    environment = _value(args, interface, "environment")
    return ["capture", "bosh", f"--deployment={_value(args, interface, 'deployment')}",
            *groups, *([f"--environment={environment}"] if environment else []),
            *common, *connection,
            *(f"--instance={item}" for item in _items(_value(args, interface, "instance_ids")))]
