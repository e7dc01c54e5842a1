"""``pcapd capture local --agent HOST[:PORT][#NETNS]``: an agent's address as users write it
(IPv6 in brackets, the port 9494 when left out, a namespace after ``#``), and one line naming
the flag for what cannot be meant. The embedded agent and api themselves run end to end in
tests/e2e/test_capture_local.py (root: they capture in namespaces)."""

from __future__ import annotations

import pytest

from pcapd.client.local import DEFAULT_AGENT_PORT, parse_agent_spec
from pcapd.errors import UsageError


@pytest.mark.parametrize(("spec", "parsed"), [
    ("198.18.0.1", ("198.18.0.1", DEFAULT_AGENT_PORT, None)),
    ("198.18.0.1:9595", ("198.18.0.1", 9595, None)),
    ("agent.example.com#c0ffee", ("agent.example.com", DEFAULT_AGENT_PORT, "c0ffee")),
    ("127.0.0.1:1#pcapd-t-ns", ("127.0.0.1", 1, "pcapd-t-ns")),
    ("[fd00::1]:65535", ("fd00::1", 65535, None)),
    ("[fd00::1]", ("fd00::1", DEFAULT_AGENT_PORT, None)),
    ("[::1]#ns", ("::1", DEFAULT_AGENT_PORT, "ns")),
    ("fd00::1", ("fd00::1", DEFAULT_AGENT_PORT, None)),  # bare IPv6: no port to split off
    ("host#", ("host", DEFAULT_AGENT_PORT, None)),  # an empty namespace is none
])
def test_an_agent_is_read_as_users_write_it(spec: str,
                                            parsed: tuple[str, int, str | None]) -> None:
    assert parse_agent_spec(spec) == parsed


@pytest.mark.parametrize(("spec", "refusal"), [
    ("h:99999", "--agent h:99999: port '99999' is not a number from 1 to 65535"),
    ("h:0", "--agent h:0: port '0' is not a number from 1 to 65535"),
    ("h:", "--agent h:: port '' is not a number from 1 to 65535"),
    ("[::1]:http", "--agent [::1]:http: port 'http' is not a number from 1 to 65535"),
    (":9494", "--agent :9494: expected HOST[:PORT][#NETNS]"),
    ("#ns", "--agent #ns: expected HOST[:PORT][#NETNS]"),
    ("[]:9494", "--agent []:9494: expected HOST[:PORT][#NETNS]"),
])
def test_what_cannot_be_meant_is_refused_naming_the_flag(spec: str, refusal: str) -> None:
    with pytest.raises(UsageError) as refused:
        parse_agent_spec(spec)
    assert str(refused.value) == refusal
