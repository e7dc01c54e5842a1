"""The laptop client: a venv holding requirements/client.txt and pcapd's built wheel, nothing
else (no cypcap, pyroute2, minio, prometheus-client, cryptography; no root needed to install
it), runs its own ``pcapd capture cf`` against a real api and real agents started from the full
install, and gets a pcapng that tshark and capinfos read. The server roles say in one line
what to install."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.distbuild import SERVER_ONLY, build_pcapd, client_venv
from tests.e2e.platform_landscape import Landscape, developer_tokens
from tests.e2e.procs import streamed_capture
from tests.netns import send_udp
from tests.readers import run_tool, tshark_fields

SERVER_EXTRA = "needs the server extra: pip install 'pcapd[server]'"


@pytest.fixture(scope="module")
def client_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("client")
    return client_venv(where / "venv", build_pcapd(where / "dist").wheel)


def test_the_client_install_has_no_server_dependency(client_bin: Path) -> None:
    found = subprocess.run(
        [str(client_bin / "python"), "-c",
         "import importlib.util, sys; "
         f"print(*[m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m)])"],
        capture_output=True, text=True, check=True, timeout=60)
    assert found.stdout.split() == []
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


@pytest.fixture(scope="module")
def landscape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landscape]:
    with Landscape(tmp_path_factory.mktemp("landscape"), cells=1, vms=0) as built:
        built.deploy_app("my-app", instances=1)
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
