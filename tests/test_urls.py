"""One helper for URL path segments built from input (issue 12, hole 2)."""

from __future__ import annotations

import httpx
import pytest

from pcapd.urls import InvalidSegment, join, origin, segment, split_url

GUID = "5f0f3a0e-4a43-4b8e-9d2c-1b2f0c1d2e3f"


@pytest.mark.parametrize("value", ["", ".", "..", "a\nb", "a\0b", "x" * 257])
def test_what_cannot_be_one_segment_is_refused(value: str) -> None:
    with pytest.raises(InvalidSegment, match="--process-type"):
        segment(value, "--process-type")


@pytest.mark.parametrize("value", [f"../../{GUID}/processes/web", "%2e%2e", "a?b#c", "web x",
                                   "..%2F", "./web", "w/eb"])
def test_the_server_sees_one_segment_with_exactly_the_value(value: str) -> None:
    url = httpx.URL(join("https://api.example.com/v3", "apps", (GUID, "app"), "processes",
                         (value, "--process-type"), "stats"))
    parts = url.raw_path.decode().split("/")
    assert parts[:5] == ["", "v3", "apps", GUID, "processes"] and parts[6:] == ["stats"]
    assert httpx.URL("https://x/" + parts[5]).path == "/" + value  # decodes to the value


@pytest.mark.parametrize(("typed", "parts"), [
    ("pcap.example.com", ("https", "pcap.example.com", None, "")),
    ("  http://10.0.0.6:8080/x  ", ("http", "10.0.0.6", 8080, "/x")),
    ("[fd00::6]:25555", ("https", "fd00::6", 25555, "")),
])
def test_a_typed_address_is_read_as_https_unless_it_names_a_scheme(
        typed: str, parts: tuple[str, str, int | None, str]) -> None:
    url = split_url(typed)
    assert (url.scheme, url.hostname, url.port, url.path) == parts


@pytest.mark.parametrize("typed", ["host:99999", "host:port", "http://[fd00::6"])
def test_an_address_that_cannot_be_a_url_raises_value_error(typed: str) -> None:
    with pytest.raises(ValueError):
        split_url(typed)


def test_an_origin_puts_an_ipv6_host_in_brackets() -> None:
    assert origin("wss", "fd00::6", 443) == "wss://[fd00::6]:443"
    assert origin("https", "pcap.example.com", 25555) == "https://pcap.example.com:25555"
