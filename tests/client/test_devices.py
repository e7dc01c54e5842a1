"""``pcapd capture local -D``: the devices of the host or of each ``--netns`` namespace in index
order, a namespace that does not exist refused naming the flag and where to look, and the lines
numbered per source as ``tcpdump -D`` numbers them, a source whose devices are unknown saying
why. (cf and bosh ask the agents through the api: tests/e2e/test_devices.py.)"""

from __future__ import annotations

import pytest

from pcapd.client.devices import device_lines, local_devices
from pcapd.errors import UsageError
from tests.netns import ip, netns


def test_lines_are_numbered_per_source_and_an_unknown_source_says_why() -> None:
    assert device_lines([("my-app/0", ["eth0", "lo"]),
                         ("my-app/1", "cannot reach its agent at 10.0.16.5:9494"),
                         ("router/0", ["lo"]), ("idle/0", [])]) == [
        "1.my-app/0:eth0", "2.my-app/0:lo",
        "my-app/1: devices unknown (cannot reach its agent at 10.0.16.5:9494)",
        "1.router/0:lo",
    ]


def test_without_a_namespace_the_hosts_devices_are_listed_lo_first() -> None:
    [(source, names)] = local_devices([])
    assert source == "host" and isinstance(names, list)
    assert names[0] == "lo"  # index 1 on every Linux host


@pytest.mark.root
def test_each_namespace_in_the_order_given_its_devices_in_index_order() -> None:
    with netns() as first, netns() as second:
        ip("-n", first.name, "link", "add", "zz0", "type", "veth", "peer", "name", "aa0")
        assert local_devices([second.name, first.name]) == [
            (second.name, ["lo"]), (first.name, ["lo", "aa0", "zz0"])]


@pytest.mark.root
def test_a_namespace_that_does_not_exist_is_refused_naming_the_flag() -> None:
    with netns() as gone:
        pass
    with pytest.raises(UsageError) as refused:
        local_devices([gone.name])
    assert str(refused.value) == (
        f"--netns {gone.name}: network namespace '{gone.name}': no network namespace at "
        f"/run/netns/{gone.name} (see 'ip netns list')")
