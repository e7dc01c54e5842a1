"""Download-link tokens (pure): what they bind, how they fail."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from pcapd.store import signing
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


def test_the_module_is_pure() -> None:
    """Loaded on its own (not through the package, which brings the stores): no trio."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('signing', {signing.__file__!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "assert 'trio' not in sys.modules and 'pcapd' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(signing.__file__).parent)
