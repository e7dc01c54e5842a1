"""The command line as users type it out of habit: tcpdump's, the cf CLI's, the bosh CLI's.

Pure functions, run right after argparse (no I/O but the environment handed in): they read
durations and sizes with units, split ``APP/INDEX`` and ``GROUP/ID``, take a trailing BPF
expression as the filter, and refuse flags that would be ignored or that contradict each other.
Each refusal is one :class:`~pcapd.errors.UsageError` naming the flag.

A trailing expression and instance words share the positional slots, so the rule is tcpdump's:
the first word that is not an instance is where the filter expression starts. An instance is
``GROUP/ID`` or ``GROUP/INDEX`` (the group starts with a letter, so ``10.0.0.0/8`` is a filter)
or, after ``-g``, a bare instance id with at least one digit (``d55baeba-…``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping

from pcapd.errors import UsageError
from pcapd.units import format_duration as _said

WHOLE_PACKET_LOCAL = 262144
"""``-s 0`` in local mode: libpcap's (and tcpdump's) whole-packet snapshot length."""
WHOLE_PACKET_REMOTE = 65535
"""``-s 0`` for cf and bosh: the most an agent allows by default (``limits.max_snaplen``)."""

_DURATION = re.compile(r"(?i)\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d)?\s*")
_DURATION_PART = re.compile(r"(?i)(\d+(?:\.\d+)?)(ms|sec|min|s|m|h|d)")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0,
                   "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?[bB]?|[bB])?\s*")
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
               "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_GROUP_ID = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)/([A-Za-z0-9][A-Za-z0-9-]*)")
_BARE_ID = re.compile(r"(?=.*\d)[0-9a-fA-F]{4,}(?:-[0-9a-fA-F]+)*")
_APP_INDEX = re.compile(r"(.+)/(\d+)")


def parse_duration(text: str) -> float:
    """``30``, ``30s``, ``5m``, ``2h``, ``1.5h``, ``500ms``, ``1h30m`` → seconds (argparse
    ``type=``). The compound form is the one pcapd's messages print (:mod:`pcapd.units`)."""
    match = _DURATION.fullmatch(text)
    if match is not None:
        return float(match[1]) * _DURATION_UNITS[match[2].lower() if match[2] else None]
    compact = text.strip()
    parts = _DURATION_PART.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30s, 5m, 2h)")
    return sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts)


def parse_size(text: str) -> int:
    """``1000``, ``500MB``, ``500M``, ``1GiB``, ``64k`` → bytes (argparse ``type=``).

    Decimal units as disks and networks count (``MB`` = 10⁶), binary ones with ``i``
    (``MiB`` = 2²⁰), as ``numfmt`` and ``systemd`` read them.
    """
    match = _SIZE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 500MB, 1GiB)")
    unit = (match[2] or "").lower().removesuffix("b")
    return int(float(match[1]) * _SIZE_UNITS[unit])


def given(args: argparse.Namespace) -> dict[str, str]:
    """dest → the option string the user typed, for every option given on the command line."""
    return dict(getattr(args, "_given", {}))


def finish(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Interpret the dialects in ``args`` in place; a UsageError for what cannot be meant."""
    typed = given(args)
    if typed.get("quiet") and typed.get("verbose"):
        raise UsageError(f"{typed['quiet']} and {typed['verbose']} contradict each other: "
                         "choose one")
    if args.role == "capture":
        _capture(args, typed, environ)
    elif args.role == "captures":
        if "environment" in typed and not args.bosh:
            raise UsageError(f"{typed['environment']} names a bosh environment: add --bosh "
                             "(without it the cf CLI's login is used)")
        if args.captures_command == "list" and args.json and args.no_headers:
            raise UsageError("--json and --no-headers: JSON has no header line; choose one")
    elif args.role == "record":
        _record(args, typed, environ)


def _refuse(typed: dict[str, str], dests: tuple[str, ...], why: str) -> None:
    for dest in dests:
        if dest in typed:
            raise UsageError(f"{typed[dest]} {why}")


def _capture(args: argparse.Namespace, typed: dict[str, str],
             environ: Mapping[str, str]) -> None:
    words = list(args.words)
    if args.target == "local":
        if "upload" in typed:
            raise UsageError("--upload stores captures on a pcapd api (capture cf|bosh); a "
                             "local capture is already on this machine: use -w FILE")
        _refuse(typed, ("api", "cacert", "insecure"),
                "is for capture cf|bosh: capture local runs its own api on this machine")
        if "certs" in typed and not args.agent:
            raise UsageError(f"{typed['certs']} is for --agent ADDR (the certificates of "
                             "'pcapd certs init' to reach running agents)")
    elif args.target == "cf":
        _cf_app(args, typed)
    else:
        words = _bosh_instances(args, typed, words, environ)
    _trailing_filter(args, typed, words)
    if args.snaplen == 0:  # the embedded agent allows libpcap's maximum; others their own
        embedded = args.target == "local" and not args.agent
        args.snaplen = WHOLE_PACKET_LOCAL if embedded else WHOLE_PACKET_REMOTE
    if args.list_interfaces:
        _refuse(typed, ("write", "count", "duration", "max_bytes", "upload", "filter",
                        "snaplen"), "does not apply to -D (it lists devices, captures nothing)")
        if args.filter:
            raise UsageError(f"-D lists devices and captures nothing: drop the filter "
                             f"expression {args.filter!r}")
        if args.target == "local" and args.agent:
            raise UsageError("-D lists this machine's devices (with --netns: a namespace's); "
                             "it does not ask agents named by --agent")


def _trailing_filter(args: argparse.Namespace, typed: dict[str, str], words: list[str]) -> None:
    """The words after the target are the filter expression, as tcpdump takes them."""
    if words:
        if args.filter:
            raise UsageError(f"{typed.get('filter', '-f')} {args.filter!r} and a trailing "
                             f"filter expression {' '.join(words)!r}: give the filter once")
        args.filter = " ".join(words)
    args.words = []


_RECORDING_PREFIX = re.compile(r"[0-9a-f]{1,32}")


def _record(args: argparse.Namespace, typed: dict[str, str],
            environ: Mapping[str, str]) -> None:
    """``record start|list|save|stop``: the target as ``capture`` reads it, then the
    recording's own flags, each refusal naming its flag."""
    if args.record_command == "start":
        words = list(args.words)
        if args.target == "cf":
            _cf_app(args, typed)
        else:
            words = _bosh_instances(args, typed, words, environ)
        _trailing_filter(args, typed, words)
        _recording_flags(args, typed)
        return
    if "environment" in typed and not args.bosh:
        raise UsageError(f"{typed['environment']} names a bosh environment: add --bosh "
                         "(without it the cf CLI's login is used)")
    if args.record_command == "list":
        if args.json and args.no_headers:
            raise UsageError("--json and --no-headers: JSON has no header line; choose one")
        return
    if not _RECORDING_PREFIX.fullmatch(args.recording_id):
        raise UsageError(f"{args.recording_id!r:.80} is not a recording id: ids are 32 hex "
                         "digits as `pcapd record list` shows them (a unique start will do)")
    if args.record_command == "save":
        _save_flags(args, typed)


def _recording_flags(args: argparse.Namespace, typed: dict[str, str]) -> None:
    if args.snaplen < 0:
        raise UsageError(f"{typed.get('snaplen', '-s')} {args.snaplen}: give the bytes to keep "
                         "of each packet, or 0 for whole packets")
    if args.snaplen == 0:
        args.snaplen = WHOLE_PACKET_REMOTE
    if args.keep is None:
        raise UsageError("say how much recent traffic to keep: --keep DURATION (e.g. --keep "
                         "10m: each instance holds its last 10 minutes of matching packets)")
    for dest, example in (("keep", "10m"), ("until", "24h")):
        value = getattr(args, dest)
        if value is not None and value <= 0:
            raise UsageError(f"{typed[dest]} {_said(value)}: give a duration above 0, e.g. "
                             f"{typed[dest]} {example}")
    if args.max_bytes is not None and args.max_bytes <= 0:
        raise UsageError(f"{typed['max_bytes']} {args.max_bytes}: give a size above 0, e.g. "
                         f"{typed['max_bytes']} 256MB")
    if args.until is not None and args.keep > args.until:
        raise UsageError(f"{typed['keep']} {_said(args.keep)} is longer than the recording runs "
                         f"({typed['until']} {_said(args.until)}): shorten --keep or lengthen "
                         "--until")
    if args.trigger is None:
        _refuse(typed, ("after", "once"), "applies to a trigger: add --trigger BPF (the "
                "packets that save a window by themselves), or drop it")
        return
    if not args.trigger.strip():
        raise UsageError(f"{typed['trigger']} needs a BPF expression, e.g. "
                         f"{typed['trigger']} 'tcp[tcpflags] & tcp-rst != 0'")
    if args.after is not None and args.after < 0:
        raise UsageError(f"{typed['after']} {_said(args.after)}: give a duration of 0s or "
                         "more")


def _save_flags(args: argparse.Namespace, typed: dict[str, str]) -> None:
    if args.upload and args.write is not None:
        raise UsageError(f"{typed['write']} and --upload: a recording is saved to a file or "
                         "into the store; choose one")
    if not args.upload and args.write is None:
        raise UsageError("say where the recording goes: -w FILE (or -w - for a pipe), or "
                         "--upload into the store")
    if args.force and args.write is None:
        raise UsageError(f"{typed['force']} overwrites an existing -w FILE: --upload writes "
                         "no file; drop it")
    if args.last is not None and args.last <= 0:
        raise UsageError(f"{typed['last']} {_said(args.last)}: give a duration above 0, e.g. "
                         f"{typed['last']} 5m (or leave it out: everything held)")


def _cf_app(args: argparse.Namespace, typed: dict[str, str]) -> None:
    """``my-app/2`` → app ``my-app``, instance 2 (as ``cf ssh my-app -i 2`` would say)."""
    match = _APP_INDEX.fullmatch(args.app)
    if match is None:
        return
    args.app = match[1]
    index = int(match[2])
    if index not in args.instance:
        args.instance = [*args.instance, index]


def _bosh_instances(args: argparse.Namespace, typed: dict[str, str], words: list[str],
                    environ: Mapping[str, str]) -> list[str]:
    """Leading instance words into groups and instances; the rest is the filter."""
    if not args.deployment:
        args.deployment = environ.get("BOSH_DEPLOYMENT") or None
        if not args.deployment:
            raise UsageError("say which deployment: -d DEPLOYMENT (or set BOSH_DEPLOYMENT)")
    groups = list(args.group)
    instances = list(args.instance_ids)
    while words:
        word = words[0]
        match = _GROUP_ID.fullmatch(word)
        if match is not None:
            if match[1] not in groups:
                groups.append(match[1])
            instances.append(word)
        elif args.group and _BARE_ID.fullmatch(word):
            instances.append(word)
        else:
            break
        words.pop(0)
    if not groups:
        raise UsageError("say which instances: -g GROUP, or GROUP/ID or GROUP/INDEX "
                         "(e.g. router/0)")
    args.group = groups
    args.instance_ids = instances
    return words
