"""``pcapd capture cf|bosh -D`` as ``tcpdump -D``: each instance's devices, asked of its agent
through the real api, with the same login and the same authorization as a capture."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
import trio
from fakes import ALICE, BOB
from platform_landscape import Landscape, developer_tokens
from procs import PCAPD

pytestmark = [pytest.mark.root, pytest.mark.tools]


@pytest.fixture(scope="module")
def landscape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landscape]:
    with Landscape(tmp_path_factory.mktemp("devices"), cells=1, vms=1) as built:
        built.deploy_app("my-app", instances=2)
        built.deploy_vms("cf", "router", teams=[])
        yield built


async def pcapd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    with trio.fail_after(60):
        done = await trio.run_process([PCAPD, *args], env=env, capture_stdout=True,
                                      capture_stderr=True, check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(),
                                       done.stderr.decode())


async def test_cf_instances_list_their_containers_devices(landscape: Landscape) -> None:
    token, refresh = developer_tokens(landscape)
    result = await pcapd("capture", "cf", "my-app", "-D", env=landscape.cf_home(token, refresh))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["1.my-app/0:lo", "1.my-app/1:lo"]


async def test_a_bosh_vm_lists_its_devices(landscape: Landscape) -> None:
    token, refresh = landscape.uaa.issue_pair(BOB, client_id="bosh_cli",
                                              scopes=["openid", "bosh.admin"])
    [vm] = landscape.director.deployments["cf"].instances
    result = await pcapd("capture", "bosh", "-d", "cf", "router/0", "-D",
                         env=landscape.bosh_env(token, refresh))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"1.router/{vm.id}:lo" in lines and any(":eth0" in line for line in lines), lines


async def test_listing_devices_is_authorized_like_a_capture(landscape: Landscape) -> None:
    auditor = landscape.uaa.issue_pair(ALICE.__class__("auditor-2", "aud", "a2@example.com"))
    landscape.cc.grant("auditor-2", "auditor", landscape.space)
    result = await pcapd("capture", "cf", "my-app", "-D", env=landscape.cf_home(*auditor))
    assert result.returncode == 1
    assert "PERMISSION_DENIED" in result.stderr and result.stdout == ""
    assert result.stderr.count("\n") == 1
