"""Prometheus metrics for the api and the agent, served at ``GET /metrics``.

One registry per role process (not the library's global one, so tests that run an agent and
an api in one process keep them apart). Counters are updated when a capture ends — from the
same totals the user sees — so the metrics and the users' summaries always agree.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest

from pcapd.proto import Counters


class Metrics:
    """The metrics of one api or agent."""

    def __init__(self, role: str, running: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.running = Gauge("pcapd_captures_running", f"Captures this {role} runs now",
                             registry=r)
        self.running.set_function(lambda: float(running()))
        self.captures = Counter("pcapd_captures", f"Captures this {role} ended, by how they "
                                "ended", ["reason"], registry=r)
        self.refusals = Counter("pcapd_refusals", "Requests refused, by message code",
                                ["code"], registry=r)
        self.packets = Counter("pcapd_packets", "Packets handed to pcapd by libpcap",
                               registry=r)
        self.written = Counter("pcapd_packets_written", "Packets written for users",
                               registry=r)
        self.bytes = Counter("pcapd_bytes", "Bytes of packet data captured", registry=r)
        self.dropped = Counter("pcapd_packets_dropped", "Packets dropped, by party",
                               ["party"], registry=r)
        self.late = Counter("pcapd_merge_late_packets", "Packets the merge wrote after newer "
                            "ones (a source outside the lateness bound)", registry=r)

    def ended(self, reason: str, totals: Counters) -> None:
        self.captures.labels(reason).inc()
        self.packets.inc(totals.packets)
        self.written.inc(totals.written)
        self.bytes.inc(totals.bytes)
        for party, count in (("kernel", totals.kernel_dropped),
                             ("interface", totals.interface_dropped),
                             ("agent", totals.agent_dropped), ("api", totals.api_dropped)):
            self.dropped.labels(party).inc(count)
        self.late.inc(totals.late)

    def refused(self, code: str) -> None:
        self.refusals.labels(code).inc()

    def exposition(self) -> tuple[str, bytes]:
        """(content type, body) of the Prometheus text format."""
        return CONTENT_TYPE_LATEST, generate_latest(self.registry)
