"""Fixtures of the client tests (helpers live in cli_logins.py).

trustme and the fake UAA are imported when a test asks for them: they need cryptography, which
the laptop client does not install, and tests/e2e/test_client_install.py runs the client tests
that need neither with the client-only venv's Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import trustme

    from tests.client.cli_logins import RecordingUAA


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    import trustme

    return trustme.CA()


@pytest.fixture
def uaa(ca: trustme.CA, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingUAA]:
    """A UAA over TLS whose CA requests trusts (as a system CA would be)."""
    from tests.client.cli_logins import RecordingUAA

    with RecordingUAA(tls=ca) as fake:
        assert fake.ca_pem_path is not None
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(fake.ca_pem_path))
        yield fake
