"""Fixtures of the client tests (helpers live in cli_logins.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trustme

from tests.client.cli_logins import RecordingUAA


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def uaa(ca: trustme.CA, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingUAA]:
    """A UAA over TLS whose CA requests trusts (as a system CA would be)."""
    with RecordingUAA(tls=ca) as fake:
        assert fake.ca_pem_path is not None
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca_pem_path))
        yield fake
