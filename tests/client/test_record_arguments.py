"""``pcapd record``: what each command line means, one line naming the flag for what cannot be
meant, and the help a user reads. The ``record list`` table is tested in test_recordings.py."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from pcapd.cli import build_parser
from pcapd.client.arguments import WHOLE_PACKET_REMOTE

PCAPD = str(Path(sys.executable).with_name("pcapd"))
RID = "3f2a" + "0" * 28


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        parse(*argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.fixture(autouse=True)
def _no_bosh_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BOSH_DEPLOYMENT", raising=False)


# -- start ---------------------------------------------------------------------------------------


def test_start_cf_as_the_issue_writes_it() -> None:
    args = parse("record", "start", "cf", "my-app", "--instance", "0", "--instance", "2",
                 "-i", "eth1", "-f", "tcp port 443", "-s", "0", "--keep", "10m",
                 "--max-bytes", "256MB", "--until", "24h",
                 "--trigger", "tcp[tcpflags] & tcp-rst != 0", "--after", "30s", "--once")
    assert (args.role, args.record_command, args.target) == ("record", "start", "cf")
    assert (args.app, args.instance, args.process_type) == ("my-app", [0, 2], "web")
    assert (args.interface, args.filter, args.snaplen) == ("eth1", "tcp port 443",
                                                           WHOLE_PACKET_REMOTE)
    assert (args.keep, args.max_bytes, args.until) == (600.0, 256_000_000, 86400.0)
    assert (args.trigger, args.after, args.once) == ("tcp[tcpflags] & tcp-rst != 0", 30.0,
                                                     True)
    assert args.words == []


def test_start_cf_as_cf_ssh_and_tcpdump_speak() -> None:
    """``APP/INDEX``, ``--process``, a trailing filter; defaults left to the api (None)."""
    args = parse("record", "start", "cf", "my-app/3", "--process", "worker", "--keep",
                 "1h30m", "port", "8080")
    assert (args.app, args.instance, args.process_type) == ("my-app", [3], "worker")
    assert (args.filter, args.interface, args.snaplen) == ("port 8080", "eth0", 65535)
    assert args.keep == 5400.0
    assert (args.max_bytes, args.until, args.trigger, args.after, args.once) == \
        (None, None, None, None, False)


def test_start_bosh_with_groups_instances_and_a_filter(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    uid = "d55baeba-6a1c-4c35-9d38-13ae6e1b1a3e"
    args = parse("record", "start", "bosh", "-d", "cf", "-g", "router", uid, "udp", "port",
                 "53", "--keep", "5m", "--max-bytes", "1GiB")
    assert (args.deployment, args.group, args.instance_ids) == ("cf", ["router"], [uid])
    assert (args.filter, args.keep, args.max_bytes) == ("udp port 53", 300.0, 1 << 30)
    monkeypatch.setenv("BOSH_DEPLOYMENT", "cf")
    args = parse("record", "start", "bosh", "router/0", "diego_cell/1", "--keep", "30s",
                 "-e", "lab")
    assert (args.deployment, args.group, args.instance_ids, args.environment) == \
        ("cf", ["router", "diego_cell"], ["router/0", "diego_cell/1"], "lab")


@pytest.mark.parametrize(("argv", "message"), [
    (("cf", "app"), "say how much recent traffic to keep: --keep DURATION (e.g. --keep 10m"),
    (("cf", "app", "--keep", "0"), "--keep 0s: give a duration above 0, e.g. --keep 10m"),
    (("cf", "app", "--keep", "ten"), "--keep: 'ten' is not a duration (e.g. 30s, 5m, 2h)"),
    (("cf", "app", "--keep", "5m", "--until", "0s"), "--until 0s: give a duration above 0"),
    (("cf", "app", "--keep", "5m", "--max-bytes", "0"), "--max-bytes 0: give a size above 0"),
    (("cf", "app", "--keep", "5m", "--max-bytes", "lots"), "--max-bytes: 'lots' is not a size"),
    (("cf", "app", "--keep", "2h", "--until", "1h"),
     "--keep 2h is longer than the recording runs (--until 1h): shorten --keep or lengthen "
     "--until"),
    (("cf", "app", "--keep", "5m", "--after", "30s"),
     "--after applies to a trigger: add --trigger BPF"),
    (("cf", "app", "--keep", "5m", "--once"), "--once applies to a trigger: add --trigger BPF"),
    (("cf", "app", "--keep", "5m", "--trigger", " "), "--trigger needs a BPF expression"),
    (("cf", "app", "--keep", "5m", "-s", "-1"), "-s -1: give the bytes to keep"),
    (("cf", "app", "--keep", "5m", "-f", "udp", "port", "53"),
     "-f 'udp' and a trailing filter expression 'port 53': give the filter once"),
    (("cf", "app", "--keep", "5m", "--keep", "10m"), "--keep given twice"),
    (("cf", "app", "--keep", "5m", "-w", "x.pcapng"), "unrecognized arguments: -w"),
    (("cf", "app", "--keep", "5m", "--upload"), "unrecognized arguments: --upload"),
    (("bosh", "router/0", "--keep", "5m"), "say which deployment: -d DEPLOYMENT"),
    (("bosh", "-d", "cf", "--keep", "5m"), "say which instances: -g GROUP"),
    (("k8s", "pod"), "invalid choice: 'k8s'"),
])
def test_start_refuses_what_cannot_be_meant_naming_the_flag(
        capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str) -> None:
    assert message in refused(capsys, "record", "start", *argv)


# -- list, save, stop ----------------------------------------------------------------------------


def test_list_save_and_stop() -> None:
    args = parse("record", "list", "--json")
    assert (args.record_command, args.json, args.bosh) == ("list", True, False)
    args = parse("record", "save", RID, "--last", "5m", "-w", "incident.pcapng", "-F")
    assert (args.recording_id, args.last, args.write, args.upload, args.force) == \
        (RID, 300.0, "incident.pcapng", False, True)
    args = parse("record", "save", "3f2a", "--upload", "--bosh", "-e", "lab")
    assert (args.recording_id, args.last, args.write, args.upload) == ("3f2a", None, None, True)
    assert (args.bosh, args.environment) == (True, "lab")
    args = parse("record", "stop", "3f2a", "--api", "https://pcap.example.com")
    assert (args.record_command, args.recording_id, args.api) == \
        ("stop", "3f2a", "https://pcap.example.com")


@pytest.mark.parametrize(("argv", "message"), [
    (("save", RID), "say where the recording goes: -w FILE (or -w - for a pipe), or --upload"),
    (("save", RID, "-w", "x.pcapng", "--upload"), "-w and --upload"),
    (("save", RID, "--upload", "-F"), "-F overwrites an existing -w FILE"),
    (("save", RID, "-w", "-", "--last", "0"), "--last 0s: give a duration above 0"),
    (("save", "../../etc", "-w", "x"), "'../../etc' is not a recording id"),
    (("stop", "3F2A"), "'3F2A' is not a recording id"),
    (("stop", "0" * 33), "is not a recording id"),
    (("stop", RID, "-e", "lab"), "-e names a bosh environment: add --bosh"),
    (("list", "--json", "--no-headers"), "--json and --no-headers"),
    (("list", "--keep", "5m"), "unrecognized arguments: --keep"),
    (("stop",), "the following arguments are required: ID"),
])
def test_list_save_stop_refuse_naming_the_flag(
        capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str) -> None:
    assert message in refused(capsys, "record", *argv)


# -- through the real command --------------------------------------------------------------------


def pcapd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PCAPD, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_help_names_every_command_and_option() -> None:
    top = pcapd("record", "--help")
    assert top.returncode == 0, top.stderr
    for word in ("start", "list", "save", "stop", "flight recorder", "--keep", "--trigger"):
        assert word in top.stdout
    start = pcapd("record", "start", "--help")
    assert start.returncode == 0 and "cf" in start.stdout and "bosh" in start.stdout
    cf = pcapd("record", "start", "cf", "--help")
    for option in ("--instance", "--process-type", "-i DEV", "-f BPF", "-s N",
                   "--keep DURATION", "--max-bytes SIZE", "--until DURATION", "--trigger BPF",
                   "--after DURATION", "--once", "Example: pcapd record start cf my-app"):
        assert option in cf.stdout, option
    bosh = pcapd("record", "start", "bosh", "--help")
    assert "-d DEPLOYMENT" in bosh.stdout and "-g GROUP" in bosh.stdout
    save = pcapd("record", "save", "--help")
    for option in ("--last DURATION", "-w FILE", "--upload", "-F"):
        assert option in save.stdout, option
    assert "record" in pcapd("--help").stdout


def test_a_refusal_is_one_line_and_no_traceback() -> None:
    result = pcapd("record", "start", "cf", "app", "--keep", "5m", "--once")
    assert result.returncode == 2
    assert result.stderr == ("pcapd: error: --once applies to a trigger: add --trigger BPF "
                             "(the packets that save a window by themselves), or drop it\n")
    assert result.stdout == ""


def test_a_valid_command_without_a_login_says_so_in_one_line(tmp_path: Path) -> None:
    """The commands are wired: without a cf login the user is told plainly, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "pcapd.cli", "record", "stop", RID, "--api", "http://127.0.0.1:9"],
        capture_output=True, text=True, check=False, timeout=60,
        env={"PATH": "/usr/bin:/bin", "CF_HOME": str(tmp_path), "HOME": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("pcapd: error: ")
    assert "log in with 'cf login' first" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
