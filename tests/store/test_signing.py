"""Download-link tokens (pure): what they bind, how they fail."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest

from pcapd.store.signing import sign, verify

KEY = b"k" * 32
CAPTURE = "0123456789abcdef0123456789abcdef"
EXPIRES = 1_800_000_600


def test_a_token_verifies_until_it_expires() -> None:
    token = sign(KEY, CAPTURE, "alice", EXPIRES)
    assert len(token) == 43 and "=" not in token
    assert len(base64.urlsafe_b64decode(token + "=")) == 32  # HMAC-SHA256, base64url
    assert verify(KEY, CAPTURE, "alice", EXPIRES, token, EXPIRES - 0.001)
    assert not verify(KEY, CAPTURE, "alice", EXPIRES, token, EXPIRES)
    assert sign(KEY, CAPTURE, "alice", EXPIRES) == token  # deterministic


@pytest.mark.parametrize(
    ("key", "capture", "user", "expires"),
    [
        (b"K" * 32, CAPTURE, "alice", EXPIRES),
        (KEY, CAPTURE[::-1], "alice", EXPIRES),
        (KEY, CAPTURE, "bob", EXPIRES),
        (KEY, CAPTURE, "alice", EXPIRES + 1),
    ],
)
def test_a_token_binds_key_capture_user_and_expiry(
    key: bytes, capture: str, user: str, expires: int
) -> None:
    token = sign(KEY, CAPTURE, "alice", EXPIRES)
    assert not verify(key, capture, user, expires, token, 0)


@pytest.mark.parametrize("token", ["", "x", "é" * 43, "\udcff" * 43, "A" * 4096])
def test_any_text_is_a_wrong_token_not_an_error(token: str) -> None:
    assert not verify(KEY, CAPTURE, "alice", EXPIRES, token, 0)


def test_fields_cannot_slide_into_each_other() -> None:
    # "|" never occurs in an id; the expiry is the last field
    assert sign(KEY, CAPTURE, "al", EXPIRES) != sign(KEY, CAPTURE, "a", int(f"1{EXPIRES}"))


def test_the_pure_half_imports_without_trio() -> None:
    """The package, its ids/keys/records and the signing load with Trio blocked: only the
    backends (``local``, ``s3``) need it, and they are imported when a store is built."""
    code = (
        "import sys; sys.modules['trio'] = None\n"
        "import pcapd.store, pcapd.store.base, pcapd.store.signing\n"
        "assert 'trio' not in sys.modules or sys.modules['trio'] is None\n"
        "assert 'pcapd.store.local' not in sys.modules and 'pcapd.store.s3' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
