"""The spellings users type out of habit (tcpdump's, the cf CLI's, the bosh CLI's), through the
real ``pcapd`` process: what reaches the api's ``start``, and one line naming the flag for
every spelling that cannot be meant."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
import trio
import trustme

from pcapd.client.arguments import parse_duration, parse_size
from pcapd.proto import BoshTarget, CaptureLimits, CaptureOptions, CfTarget
from tests.client.cli_logins import (
    SPACE_GUID,
    RecordingUAA,
    cf_document,
    write_bosh_config,
    write_cf_config,
)
from tests.client.test_remote import child_env, refuse, run_pcapd, serve_fake_api
from tests.fakes.director import FakeDirector

PCAPD = str(Path(sys.executable).with_name("pcapd"))


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 30.0), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("1.5h", 5400.0),
    ("500ms", 0.5), ("1d", 86400.0), ("10 min", 600.0)])
def test_durations_take_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "size"), [
    ("1000", 1000), ("500MB", 500_000_000), ("500M", 500_000_000), ("1GiB", 2**30),
    ("64k", 64_000), ("2 MiB", 2 * 2**20), ("1.5GB", 1_500_000_000), ("10B", 10)])
def test_sizes_take_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "5x", "m", "-1", "1e3", "5 m s"])
def test_a_duration_without_meaning_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def pcapd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PCAPD, *args], capture_output=True, text=True, timeout=60,
                          check=False, env=env)


def test_dash_dash_version_is_pcapd_version() -> None:
    result = pcapd("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == pcapd("version").stdout
    assert result.stdout.startswith("pcapd ")


@pytest.mark.parametrize(("args", "named"), [
    (("capture", "local", "--api", "https://pcap.example.com"), "--api"),
    (("capture", "local", "-k"), "-k"),
    (("capture", "local", "--cacert", "ca.pem"), "--cacert"),
    (("capture", "local", "--certs", "pki"), "--certs"),
    (("capture", "local", "-q", "-v"), "-q and -v"),
    (("capture", "local", "-w", "a.pcapng", "-w", "b.pcapng"), "-w given twice"),
    (("capture", "local", "-i", "lo", "--interface", "eth0"), "--interface given twice"),
    (("capture", "cf", "app", "--process", "web", "--process-type", "worker"), "--process-type"),
    (("capture", "local", "-f", "udp", "tcp", "port", "80"), "-f 'udp' and a trailing filter"),
    (("capture", "local", "--duration", "5x"), "--duration"),
    (("capture", "local", "--max-bytes", "lots"), "--max-bytes"),
    (("capture", "local", "-D", "-w", "x.pcapng"), "-w does not apply to -D"),
    (("capture", "local", "-D", "udp"), "-D lists devices"),
    (("capture", "local", "-D", "--agent", "127.0.0.1:9494", "--certs", "pki"), "--agent"),
    (("captures", "list", "-e", "lab"), "-e names a bosh environment"),
    (("captures", "list", "--json", "--no-headers"), "--json and --no-headers"),
    (("capture", "local", "--bogus", "udp"), "--bogus"),
])
def test_what_cannot_be_meant_is_one_line_naming_the_flag(args: tuple[str, ...],
                                                          named: str) -> None:
    result = pcapd(*args)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


async def test_cf_spoken_as_cf_ssh_and_tcpdump(tmp_path: Path) -> None:
    write_cf_config(tmp_path, cf_document("https://login.example.com", "eyJa", "eyJr"))
    async with trio.open_nursery() as nursery:
        port, seen = await serve_fake_api(nursery, refuse)
        result = await run_pcapd(
            "capture", "cf", "myapp/2", "--process", "worker", "-i", "lo", "-nn",
            "--duration", "5m", "--max-bytes", "500MB", "-s", "0", "tcp", "port", "8080",
            "-w", str(tmp_path / "out.pcapng"), "-q",
            env=child_env(CF_HOME=str(tmp_path), PCAPD_API=f"ws://127.0.0.1:{port}"))
        nursery.cancel_scope.cancel()
    assert result.returncode == 1, result.stderr  # the stand-in refuses after the start
    [start] = seen.starts
    assert start.target == CfTarget(app="myapp", space=SPACE_GUID, instances=[2],
                                    process_type="worker")
    assert start.options == CaptureOptions(device="lo", filter="tcp port 8080", snaplen=65535)
    assert start.limits == CaptureLimits(max_duration=300.0, max_bytes=500_000_000)


async def test_bosh_spoken_as_the_bosh_cli_and_bbl(tmp_path: Path) -> None:
    config = write_bosh_config(tmp_path / "bosh-config", [
        {"url": "https://10.0.0.6:25555", "alias": "lab", "access_token": "opaque-token"}])
    uid = "d55baeba-6a1c-4c35-9d38-13ae6e1b1a3e"
    async with trio.open_nursery() as nursery:
        port, seen = await serve_fake_api(nursery, refuse)
        result = await run_pcapd(
            "capture", "bosh", "router/0", f"diego_cell/{uid}", "udp", "and", "net",
            "10.0.0.0/8", "--duration", "90s", "-w", str(tmp_path / "out.pcapng"), "-q",
            env=child_env(BOSH_CONFIG=str(config), BOSH_ENVIRONMENT="lab",
                          BOSH_DEPLOYMENT="cf", PCAPD_API=f"ws://127.0.0.1:{port}"))
        nursery.cancel_scope.cancel()
    assert result.returncode == 1, result.stderr
    [start] = seen.starts
    assert start.target == BoshTarget(deployment="cf", groups=["router", "diego_cell"],
                                      instances=["router/0", f"diego_cell/{uid}"])
    assert start.options.filter == "udp and net 10.0.0.0/8"
    assert start.limits.max_duration == 90.0


def test_bosh_without_a_deployment_says_where_it_comes_from(tmp_path: Path) -> None:
    env = child_env(BOSH_CONFIG=str(tmp_path / "none"))
    env.pop("BOSH_DEPLOYMENT", None)
    result = pcapd("capture", "bosh", "router/0", env=env)
    assert result.returncode == 2
    assert result.stderr == ("pcapd: error: say which deployment: -d DEPLOYMENT (or set "
                             "BOSH_DEPLOYMENT)\n")


async def test_bbl_style_environment_logs_in_with_client_credentials(
        tmp_path: Path, ca: trustme.CA) -> None:
    """``eval "$(bbl print-env)"``: no bosh CLI config at all, a director address, a client and
    its secret, the director's CA as PEM text; the api gets the client's token from the
    director's UAA, and the secret appears nowhere."""
    secret = "s3cret-Never-Shown"
    with RecordingUAA(tls=ca) as uaa, FakeDirector(uaa, tls=ca) as director:
        uaa.clients["pcap-ops"] = secret
        uaa.client_scopes["pcap-ops"] = ("bosh.admin",)
        async with trio.open_nursery() as nursery:
            port, seen = await serve_fake_api(nursery, refuse)
            result = await run_pcapd(
                "capture", "bosh", "router/0", "-w", str(tmp_path / "out.pcapng"), "-q",
                env=child_env(BOSH_CONFIG=str(tmp_path / "no-bosh-config"),
                              BOSH_ENVIRONMENT=director.url, BOSH_DEPLOYMENT="cf",
                              BOSH_CLIENT="pcap-ops", BOSH_CLIENT_SECRET=secret,
                              BOSH_CA_CERT=ca.cert_pem.bytes().decode(),
                              PCAPD_API=f"ws://127.0.0.1:{port}"))
            nursery.cancel_scope.cancel()
    assert result.returncode == 1, result.stderr
    [request] = uaa.token_requests
    assert request.basic == ("pcap-ops", secret)
    assert request.form == {"grant_type": "client_credentials"}
    scheme, token = seen.headers[0]["authorization"].split(" ", 1)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (scheme, claims["client_id"], claims["scope"]) == ("bearer", "pcap-ops",
                                                              ["bosh.admin"])
    assert secret not in result.stderr.decode() + result.stdout.decode()


def test_a_client_without_its_secret_says_what_to_set(tmp_path: Path) -> None:
    result = pcapd("capture", "bosh", "-d", "cf", "router/0",
                   env=child_env(BOSH_CONFIG=str(tmp_path / "none"), BOSH_CLIENT="ops",
                                 BOSH_ENVIRONMENT="https://10.0.0.6"))
    assert result.returncode == 2
    assert "BOSH_CLIENT_SECRET" in result.stderr and result.stderr.count("\n") == 1
