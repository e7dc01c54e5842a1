"""``pcapd extcap`` at work: answer Wireshark's questions, or run the capture it asks for.

The sentences and the translation of a ``--capture`` call into ``pcapd capture … -w FIFO`` are
in :mod:`pcapd.client.extcap.protocol`. Here is what touches the outside: libpcap for the
filter check, stdout for the answers, and stderr during a capture. Wireshark shows whatever an
extcap writes on stderr as "Error by extcap pipe", even after a clean run, so while the capture
runs stderr is held back (and copied to ``--log-file``): only the end of a failed capture
reaches Wireshark.
"""

from __future__ import annotations

import argparse
import io
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from pcapd.client.extcap.protocol import (
    Arg,
    Interface,
    capture_command,
    config_sentences,
    devices_command,
    dlts_sentences,
    interface_named,
    interfaces_sentences,
    reloadable,
    value_sentences,
    version_sentence,
)
from pcapd.errors import PcapdError, UsageError, collapse

STDERR_SHOWN = 1000
"""Characters of a failed capture's stderr passed on: Wireshark shows at most 1024 bytes."""


def filter_problem(expr: str) -> str | None:
    """Why ``expr`` is no valid capture filter, in libpcap's words; None if it is."""
    # libpcap only for this question: Wireshark asks --extcap-interfaces at every start
    try:
        from pcapd.agent.bpf import InvalidFilter, compile_filter  # noqa: PLC0415
    except ImportError:  # a client-only install has no libpcap binding: the api checks it
        return None
    try:
        compile_filter(expr)
    except InvalidFilter as exc:
        return str(exc)
    return None


class _Quiet(io.StringIO):
    """Stands in for stderr during a capture: keeps the text, copies it to the log file."""

    def __init__(self, log: TextIO | None) -> None:
        super().__init__()
        self.log = log

    def write(self, text: str) -> int:
        self.to_log(text)
        return super().write(text)

    def to_log(self, text: str) -> None:
        if self.log is not None:
            self.log.write(text)
            self.log.flush()

    def isatty(self) -> bool:
        return False

    def tail(self, limit: int = STDERR_SHOWN) -> str:
        """The last whole lines, at most ``limit`` characters (Wireshark shows 1024 bytes)."""
        text = self.getvalue()
        if len(text) <= limit:
            return text
        cut = text[-limit:]
        return cut[cut.index("\n") + 1:] if "\n" in cut[:-1] else cut


@contextmanager
def _quiet_stderr(log_path: str | None) -> Iterator[_Quiet]:
    log = None
    if log_path:
        try:
            log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise UsageError(f"--log-file {log_path}: cannot write: {exc.strerror}") from exc
    quiet = _Quiet(log)
    real = sys.stderr
    sys.stderr = quiet
    try:
        yield quiet
    finally:
        sys.stderr = real
        if log is not None:
            log.close()


@contextmanager
def _fifo_held(path: str) -> Iterator[None]:
    """Keep a write end of Wireshark's fifo open for as long as the block runs.

    Wireshark takes the end of the fifo as the end of the extcap and may stop reading its
    stderr there: the capture's own output closes the fifo as it unwinds, before the reason was
    written. With a second write end held until the reason is on stderr, the fifo ends after it.
    """
    fd = None
    try:
        if stat.S_ISFIFO(os.stat(path).st_mode):
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        fd = None  # no fifo, or no reader yet: nothing to hold
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _tell(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _capture(args: argparse.Namespace, capture: Callable[[list[str]], int]) -> int:
    argv = capture_command(args)
    failed = ""
    with _fifo_held(args.fifo):
        try:
            with _quiet_stderr(args.log_file) as quiet:
                quiet.to_log(f"{time.strftime('%Y-%m-%d %H:%M:%S')} pcapd {' '.join(argv)}\n")
                try:
                    with collapse():
                        status = capture(argv)
                except PcapdError as exc:
                    quiet.to_log(f"pcapd: error: {exc}\n")
                    raise
                finally:
                    failed = quiet.tail()
        except SystemExit:  # argparse refused the command line: its words are in `failed`
            _tell(failed)
            raise
        except PcapdError as exc:  # said here, while the fifo is still open
            _tell(f"pcapd: error: {exc}\n")
            return 2 if isinstance(exc, UsageError) else 1
        if status != 0:
            _tell(failed)
    return status


def _reload(interface: Interface, arg: Arg, args: argparse.Namespace,
            parse: Callable[[list[str]], argparse.Namespace] | None) -> list[tuple[str, str]]:
    """A selector's values, asked of Cloud Controller or the agents now; a failure is one
    value that says why (Wireshark shows the list, not stderr)."""
    from pcapd.client import selectors  # noqa: PLC0415 (network clients only for a reload)

    try:
        if arg.dest == "app":
            return selectors.cf_apps()
        if arg.dest == "instances":
            return selectors.cf_instances(args.app or "", args.process_type or "web")
        assert parse is not None, "a device reload parses a capture command line"
        return selectors.devices(interface.target, parse(devices_command(args)))
    except PcapdError as exc:
        return [("", f"cannot list them: {exc}")]


def run_extcap(args: argparse.Namespace, capture: Callable[[list[str]], int],
               parse: Callable[[list[str]], argparse.Namespace] | None = None) -> int:
    """``pcapd extcap``: answer Wireshark, or run ``capture(argv)`` for a ``--capture`` call.

    ``capture`` runs a ``pcapd capture`` command line and returns its exit status. During it
    stderr is held back (and copied to ``--log-file``); only when the capture fails does its
    end reach Wireshark, written before the fifo closes (see :func:`_fifo_held`).
    """
    if args.capture:
        return _capture(args, capture)
    if args.extcap_interfaces:
        lines = interfaces_sentences()
    elif args.extcap_dlts:
        lines = dlts_sentences(interface_named(args.extcap_interface))
    elif args.extcap_config:
        interface = interface_named(args.extcap_interface)
        if args.extcap_reload_option:
            arg = reloadable(interface, args.extcap_reload_option)
            lines = value_sentences(interface, arg, _reload(interface, arg, args, parse))
        else:
            lines = config_sentences(interface)
    elif args.extcap_capture_filter is not None:
        interface_named(args.extcap_interface)
        problem = filter_problem(args.extcap_capture_filter)
        lines = [problem] if problem else []
    elif args.extcap_version is not None:
        lines = [version_sentence()]
    else:
        raise UsageError("pcapd extcap answers Wireshark: --extcap-interfaces, --extcap-dlts, "
                         "--extcap-config or --capture (see roles/wireshark/README.md)")
    for line in lines:
        print(line)
    return 0
