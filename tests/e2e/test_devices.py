"""``pcapd capture cf|bosh -D`` as ``tcpdump -D``: each instance's devices, asked of its agent
through the real api, with the same login and the same authorization as a capture."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.e2e.platform_landscape import Landscape, developer_tokens
from tests.e2e.procs import PCAPD
from tests.fakes import ALICE, BOB

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


def values(stdout: str) -> list[tuple[str, str]]:
    """(value, display) of each ``value`` sentence Wireshark would read."""
    found = []
    for line in stdout.splitlines():
        assert line.startswith("value "), line
        fields = dict(re.findall(r"\{(\w+)=([^}]*)\}", line))
        found.append((fields["value"], fields["display"]))
    return found


async def test_wireshark_reloads_apps_instances_and_devices(landscape: Landscape) -> None:
    """The capture dialog's reload buttons, as Wireshark calls them: the apps of the targeted
    space (Cloud Controller), the app's instances, and the devices its agents see."""
    token, refresh = developer_tokens(landscape)
    env = landscape.cf_home(token, refresh)
    ask = ("--extcap-config", "--extcap-interface", "pcapd-cf", "--extcap-reload-option")
    apps = await pcapd(*ask, "app", env=env)
    assert (apps.returncode, apps.stderr) == (0, ""), apps.stderr
    assert ("my-app", "my-app") in values(apps.stdout)
    instances = await pcapd(*ask, "--instances", "--app", "my-app", env=env)
    assert values(instances.stdout) == [("", "all instances"), ("0", "0 (RUNNING)"),
                                        ("1", "1 (RUNNING)")], instances.stderr
    devices = await pcapd(*ask, "device", "--app", "my-app", env=env)
    assert values(devices.stdout) == [("lo", "lo")], devices.stderr
    bob = landscape.uaa.issue_pair(BOB, client_id="bosh_cli", scopes=["openid", "bosh.admin"])
    vm = await pcapd("--extcap-config", "--extcap-interface", "pcapd-bosh",
                     "--extcap-reload-option", "device", "--deployment", "cf", "--groups",
                     "router", env=landscape.bosh_env(*bob))
    assert ("eth0", "eth0") in values(vm.stdout) and ("lo", "lo") in values(vm.stdout), vm


async def test_a_reload_that_cannot_list_says_why_in_the_list(landscape: Landscape,
                                                              tmp_path: Path) -> None:
    env = {**landscape.cf_home("x", "y"), "CF_HOME": str(tmp_path)}  # no cf login at all
    result = await pcapd("--extcap-config", "--extcap-interface", "pcapd-cf",
                         "--extcap-reload-option", "app", env=env)
    assert result.returncode == 0 and result.stderr == ""
    [(value, display)] = values(result.stdout)
    assert value == "" and display.startswith("cannot list them: ") and "cf login" in display
