"""Cloud Foundry route integrity: gorouter's requests reach an app container's ``eth0`` as TLS
to envoy; the app's port is on ``lo``. A cf capture on ``eth0`` filtered on the app's port that
sees nothing says so, with the hint — through the real api, agents and fakes."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import trio

from pcapd.client.progress import ROUTE_HINT_AFTER
from tests.e2e.platform_landscape import Landscape, developer_tokens
from tests.e2e.procs import streamed_capture
from tests.netns import ip

pytestmark = [pytest.mark.root, pytest.mark.tools]


@pytest.fixture(scope="module")
def landscape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landscape]:
    with Landscape(tmp_path_factory.mktemp("route-hint"), cells=1, vms=0) as built:
        built.deploy_app("my-app", instances=1)
        yield built


async def test_nothing_on_eth0_for_the_apps_port_hints_at_lo(landscape: Landscape) -> None:
    token, refresh = developer_tokens(landscape)
    [container] = landscape.cells[0].containers.values()
    peer = f"pch{secrets.token_hex(3)}"
    ip("link", "add", "eth0", "netns", container.name, "type", "veth", "peer", "name", peer)
    ip("-n", container.name, "link", "set", "eth0", "up")
    ip("link", "set", peer, "up")
    try:
        with trio.fail_after(ROUTE_HINT_AFTER + 60):
            async with streamed_capture("cf", "my-app/0", "-i", "eth0", "tcp", "port", "8080",
                                        env=landscape.cf_home(token, refresh)) as capture:
                await capture.wait_started(interfaces=1)
                hint = await capture.stderr.wait_for(lambda line: "hint:" in line)
                capture.interrupt()
                assert await capture.wait_exit() == 0, capture.stderr.text
    finally:
        ip("link", "del", peer, check=False)
    assert "nothing captured on eth0" in hint and "try -i lo" in hint
    assert "61001" in hint
