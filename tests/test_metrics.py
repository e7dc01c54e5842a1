"""``GET /metrics`` of one api or agent: counters from the totals a capture ended with, read back
through Prometheus' own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from pcapd.metrics import Metrics
from pcapd.proto import Counters


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition: (name, labels) → value."""
    content_type, body = metrics.exposition()
    assert content_type.split(";")[0] == "text/plain"  # the text format Prometheus scrapes
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples}


def test_a_capture_that_ended_adds_its_totals() -> None:
    metrics = Metrics("api", lambda: 0)
    metrics.ended("stopped", Counters(packets=10, bytes=1500, written=7, kernel_dropped=1,
                                      interface_dropped=2, agent_dropped=2, api_dropped=1, late=3))
    metrics.ended("stopped", Counters(packets=5, bytes=500, written=5))
    metrics.ended("aborted", Counters())
    got = scrape(metrics)
    assert got[("pcapd_captures_total", (("reason", "stopped"),))] == 2
    assert got[("pcapd_captures_total", (("reason", "aborted"),))] == 1
    assert got[("pcapd_packets_total", ())] == 15
    assert got[("pcapd_packets_written_total", ())] == 12
    assert got[("pcapd_bytes_total", ())] == 2000
    assert got[("pcapd_merge_late_packets_total", ())] == 3
    assert {party: got[("pcapd_packets_dropped_total", (("party", party),))]
            for party in ("kernel", "interface", "agent", "api")} == {
        "kernel": 1, "interface": 2, "agent": 2, "api": 1}


def test_refusals_are_counted_by_message_code() -> None:
    metrics = Metrics("agent", lambda: 0)
    for code in ("LIMIT_REACHED", "LIMIT_REACHED", "UNAUTHORIZED"):
        metrics.refused(code)
    got = scrape(metrics)
    assert got[("pcapd_refusals_total", (("code", "LIMIT_REACHED"),))] == 2
    assert got[("pcapd_refusals_total", (("code", "UNAUTHORIZED"),))] == 1


def test_running_captures_are_read_when_scraped() -> None:
    running = [3]
    metrics = Metrics("agent", lambda: running[0])
    assert scrape(metrics)[("pcapd_captures_running", ())] == 3
    running[0] = 0
    assert scrape(metrics)[("pcapd_captures_running", ())] == 0


def test_an_agent_and_an_api_in_one_process_keep_their_own_counts_and_words() -> None:
    agent, api = Metrics("agent", lambda: 1), Metrics("api", lambda: 2)
    agent.refused("LIMIT_REACHED")
    assert ("pcapd_refusals_total", (("code", "LIMIT_REACHED"),)) not in scrape(api)
    assert scrape(agent)[("pcapd_captures_running", ())] == 1
    assert b"# HELP pcapd_captures_running Captures this agent runs now" in agent.exposition()[1]
    assert b"# HELP pcapd_captures_running Captures this api runs now" in api.exposition()[1]
