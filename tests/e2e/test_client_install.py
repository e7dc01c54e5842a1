"""The laptop client: a venv holding requirements/client.txt and pcapd's built wheel, nothing
else (no cypcap, pyroute2, minio, prometheus-client, cryptography; no root needed to install
it), runs its own ``pcapd capture cf``, ``capture bosh``, ``capture cf --upload``, ``captures
list`` and ``captures download`` against a real api and real agents started from the full
install, and gets pcapngs that tshark and capinfos read; the client's own unit tests pass with
that venv's Python; the server roles say in one line what to install. A laptop without a
compiler installs pcapd from the sdist as well (``pipx install .`` is the same: pipx runs pip in
a venv of its own)."""

from __future__ import annotations

import shutil
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.distbuild import (
    QUIET_PIP_ENV,
    REPO,
    SERVER_ONLY,
    Dists,
    build_pcapd,
    client_venv,
    importable,
    install_locked,
    wheelhouse,
)
from tests.e2e.platform_landscape import Landscape, developer_tokens
from tests.e2e.procs import streamed_capture
from tests.e2e.test_upload import download, upload
from tests.fakes import BOB
from tests.netns import send_udp
from tests.readers import run_tool, tshark_fields

SERVER_EXTRA = "needs the server extra: pip install 'pcapd[server]'"
PURE = "compiled core: not built: pure Python"

CLIENT_UNIT_TESTS = [
    "tests/client/test_notes.py",
    "tests/client/test_output.py",
    "tests/client/test_progress.py",
    "tests/client/test_record_arguments.py",
    "tests/client/test_recordings.py",
]
"""The client's tests that need no server library. The others in tests/client talk to the fake
UAA, which signs its tokens with cryptography (through trustme and PyJWT's crypto extra), or
build network namespaces with pyroute2; they run in the full install."""
TEST_TOOLS = ("pytest", "pytest-trio", "pytest-timeout", "hypothesis")


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    return build_pcapd(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def client_bin(tmp_path_factory: pytest.TempPathFactory, dists: Dists) -> Path:
    return client_venv(tmp_path_factory.mktemp("client") / "venv", dists.wheel)


def test_the_client_install_has_no_server_dependency(client_bin: Path) -> None:
    assert importable(client_bin / "python", SERVER_ONLY) == []
    version = subprocess.run([str(client_bin / "pcapd"), "--version"], capture_output=True,
                             text=True, check=False, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("pcapd "), version


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["agent", "--config", "agent.yml"], "agent"),
        (["agent", "--config", "agent.yml", "--check"], "agent"),
        (["api", "--config", "api.yml"], "api"),
        (["capture", "local", "-i", "lo", "-w", "x.pcapng"], "capture local"),
        (["certs", "init", "certs"], "certs"),
    ],
)
def test_a_server_role_says_what_to_install(client_bin: Path, tmp_path: Path,
                                            argv: list[str], command: str) -> None:
    done = subprocess.run([str(client_bin / "pcapd"), *argv], capture_output=True, text=True,
                          check=False, timeout=60, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == f"pcapd: error: pcapd {command} {SERVER_EXTRA}\n"
    assert list(tmp_path.iterdir()) == []  # nothing half-made


def test_the_client_unit_tests_pass_in_the_client_install(client_bin: Path,
                                                          tmp_path: Path) -> None:
    """With the test tools added (at the lock's versions; none brings a server library), the
    venv's Python runs the client's tests from a copy of tests/: the checkout is not on its
    path, so ``import pcapd`` is the installed wheel."""
    python = client_bin / "python"
    install_locked(python, *TEST_TOOLS)
    assert importable(python, SERVER_ONLY) == []
    shutil.copytree(REPO / "tests", tmp_path / "tests",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "setup.cfg", tmp_path)  # the pytest settings: trio_mode, markers
    which = subprocess.run([str(python), "-c", "import pcapd; print(pcapd.__file__)"],
                           capture_output=True, text=True, check=True, timeout=60, cwd=tmp_path)
    assert which.stdout.startswith(str(client_bin.parent)), which.stdout
    run = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          *CLIENT_UNIT_TESTS], capture_output=True, text=True, check=False,
                         timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = run.stdout.splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary, summary


def test_a_laptop_without_a_compiler_installs_from_the_sdist(dists: Dists,
                                                             tmp_path: Path) -> None:
    """``pip install pcapd-VERSION.tar.gz`` (what ``pipx install .`` does from a clone): pip
    builds the wheel in an isolated environment (setuptools and wheel from the wheelhouse here,
    from the index on a laptop) and resolves the client's dependencies. ``CC=false`` is a
    machine without a working compiler: the optional extensions are skipped, pcapd runs its
    pure-Python twins."""
    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-cache-dir",
                    "--find-links", str(wheelhouse()), str(dists.sdist)],
                   check=True, timeout=300, env=QUIET_PIP_ENV | {"CC": "false"},
                   capture_output=True)
    assert importable(bin_dir / "python", SERVER_ONLY) == []
    version = subprocess.run([str(bin_dir / "pcapd"), "--version"], capture_output=True,
                             text=True, check=False, timeout=60)
    assert version.returncode == 0, version
    assert version.stdout.startswith("pcapd ") and PURE in version.stdout, version.stdout
    helped = subprocess.run([str(bin_dir / "pcapd"), "capture", "cf", "--help"],
                            capture_output=True, text=True, check=False, timeout=60)
    assert (helped.returncode, helped.stderr) == (0, ""), helped
    assert helped.stdout.startswith("usage: pcapd capture cf "), helped.stdout


@pytest.fixture(scope="module")
def landscape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landscape]:
    with Landscape(tmp_path_factory.mktemp("landscape"), cells=1, vms=1) as built:
        built.deploy_app("my-app", instances=1)
        built.deploy_vms("cf", "router", teams=["team-a"])
        yield built


@pytest.mark.root
@pytest.mark.tools
async def test_the_client_install_captures_an_app_instance(
        client_bin: Path, landscape: Landscape, tmp_path: Path) -> None:
    token, refresh = developer_tokens(landscape)
    container = next(iter(landscape.cells[0].containers.values()))
    with trio.fail_after(90):
        async with streamed_capture("cf", "my-app", "--instance", "0", "-i", "lo", "-f",
                                    "udp and not icmp", env=landscape.cf_home(token, refresh),
                                    pcapd=str(client_bin / "pcapd")) as capture:
            await capture.wait_started(interfaces=1)
            await send_udp(container, "127.0.0.1", 9999, 20, marker=b"laptop")
            await capture.wait_for_bytes(b"laptop", 20)
            capture.interrupt()
            assert await capture.wait_exit() == 0, capture.stderr.text
    out = tmp_path / "out.pcapng"
    out.write_bytes(capture.data)
    rows = tshark_fields(out, "frame.interface_name", "data.data")
    laptop = bytes.hex(b"laptop")
    assert [row[0] for row in rows if row[1].startswith(laptop)] == ["my-app/0:lo"] * 20
    assert "Number of stat entries = 1" in run_tool("capinfos", out)


@pytest.mark.root
@pytest.mark.tools
async def test_the_client_install_captures_a_bosh_vm(
        client_bin: Path, landscape: Landscape, tmp_path: Path) -> None:
    token, refresh = landscape.uaa.issue_pair(BOB, client_id="bosh_cli",
                                              scopes=["openid", "bosh.admin"])
    instance = landscape.director.deployments["cf"].instances[0]
    with trio.fail_after(90):
        async with streamed_capture("bosh", "-d", "cf", "-g", "router", instance.id, "-i",
                                    "eth0", "-f", "udp and not icmp",
                                    env=landscape.bosh_env(token, refresh),
                                    pcapd=str(client_bin / "pcapd")) as capture:
            await capture.wait_started(interfaces=1)
            await send_udp(None, landscape.vms[0].ip, 9999, 20, marker=b"vm-laptop")
            await capture.wait_for_bytes(b"vm-laptop", 20)
            capture.interrupt()
            assert await capture.wait_exit() == 0, capture.stderr.text
    out = tmp_path / "out.pcapng"
    out.write_bytes(capture.data)
    rows = tshark_fields(out, "frame.interface_name", "data.data")
    marker = bytes.hex(b"vm-laptop")
    assert [row[0] for row in rows if row[1].startswith(marker)] == [
        f"router/{instance.id}:eth0"] * 20
    assert "Number of stat entries = 1" in run_tool("capinfos", out)


@pytest.mark.root
@pytest.mark.tools
async def test_the_client_install_lists_and_downloads_a_stored_capture(
        client_bin: Path, landscape: Landscape, tmp_path: Path) -> None:
    """``capture cf --upload`` stores the merged pcapng through the api; ``captures list``
    shows it and ``captures download`` fetches it, all from the client-only venv."""
    pcapd = str(client_bin / "pcapd")
    env = landscape.cf_home(*developer_tokens(landscape))
    container = next(iter(landscape.cells[0].containers.values()))
    capture_id, _, _ = await upload(["cf", "my-app", "--instance", "0", "-i", "lo"], env,
                                    [(container, "127.0.0.1", b"stored")], pcapd=pcapd)
    with trio.fail_after(60):
        listed = await trio.run_process([pcapd, "captures", "list"], env=env,
                                        capture_stdout=True, capture_stderr=True, check=False)
    assert listed.returncode == 0, listed.stderr.decode()
    assert capture_id in [line.split("\t")[0] for line in listed.stdout.decode().splitlines()]
    out = tmp_path / "downloaded.pcapng"
    with trio.fail_after(60):
        fetched = await download(capture_id, env, out, pcapd=pcapd)
    assert fetched.returncode == 0, fetched.stderr.decode()
    rows = tshark_fields(out, "frame.interface_name", "data.data")
    stored = bytes.hex(b"stored")
    assert [row[0] for row in rows if row[1].startswith(stored)] == ["my-app/0:lo"] * 20
    assert "Number of stat entries = 1" in run_tool("capinfos", out)
