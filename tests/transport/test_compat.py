"""The patches of dependencies' private APIs are applied, and a dependency that lacks a private
name pcapd relies on stops pcapd at import with a message naming it, its version and the name.

Missing names are simulated with fake module objects handed to the checks (and, for the import
itself, put in a child interpreter's ``sys.modules``); the real libraries are never altered.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import types
from pathlib import Path

import pytest
import trio
import trio.testing
import trio_websocket

from pcapd.errors import PcapdError
from pcapd.transport import _compat
from pcapd.transport._compat import (
    CHECKED_WITH,
    IncompatibleDependency,
    check_send_binary,
    check_trio,
    patch_trio_websocket,
    ssl_object,
)
from tests.distbuild import LOCKS, read_lock


class CompleteConnection:
    """What pcapd expects of trio-websocket's ``WebSocketConnection``."""

    def __init__(self) -> None:
        self._wsproto = None

    async def _send(self, event: object) -> None: ...

    async def _handle_ping_event(self, event: object) -> None: ...


class ConnectionWithoutWsproto(CompleteConnection):
    def __init__(self) -> None:
        self.wsproto = None  # renamed


class ConnectionWithRenamedHandler:
    def __init__(self) -> None:
        self._wsproto = None

    async def _send(self, event: object) -> None: ...

    async def _on_ping(self, event: object) -> None: ...


def fake_module(name: str, version: str, **attributes: object) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__version__ = version  # type: ignore[attr-defined]
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


def test_the_real_ping_handler_is_pcapds() -> None:
    assert trio_websocket.WebSocketConnection._handle_ping_event is _compat._pong_while_open


def test_the_real_ssl_stream_gives_its_ssl_object() -> None:
    raw, _ = trio.testing.memory_stream_pair()
    tls = trio.SSLStream(raw, ssl.create_default_context(), server_hostname="pcapd.test")
    assert isinstance(ssl_object(tls), ssl.SSLObject)
    assert ssl_object(raw) is None  # not TLS: nothing to read ahead


def test_a_complete_fake_trio_websocket_gets_the_patch() -> None:
    cls = type("WebSocketConnection", (CompleteConnection,), {})
    patch_trio_websocket(fake_module("trio_websocket", "9.9", WebSocketConnection=cls))
    assert cls._handle_ping_event is _compat._pong_while_open


@pytest.mark.parametrize(("cls", "missing"), [
    (ConnectionWithRenamedHandler, "WebSocketConnection._handle_ping_event, a method"),
    (ConnectionWithoutWsproto, "WebSocketConnection._wsproto, an attribute set in __init__"),
    (None, "WebSocketConnection._send, a method"),
])
def test_a_trio_websocket_without_a_name_pcapd_patches_is_refused(cls: type | None,
                                                                  missing: str) -> None:
    module = fake_module("trio_websocket", "9.9")
    if cls is not None:
        module.WebSocketConnection = cls  # type: ignore[attr-defined]
    with pytest.raises(IncompatibleDependency) as caught:
        patch_trio_websocket(module)
    message = str(caught.value)
    assert message.startswith(f"trio-websocket 9.9 (trio_websocket): pcapd expected {missing}, ")
    assert "trio-websocket#184" in message  # why pcapd needs it
    assert f"checked with trio-websocket {CHECKED_WITH['trio-websocket']}" in message
    assert getattr(cls, "_handle_ping_event", None) is not _compat._pong_while_open  # not half done


class SendingConnection:
    """What :func:`send_binary` expects of ``WebSocketConnection``."""

    def __init__(self) -> None:
        self._wsproto = self._close_reason = self._stream = self._stream_lock = None

    async def _abort_web_socket(self) -> None: ...


class SendingConnectionWithoutLock(SendingConnection):
    def __init__(self) -> None:
        self._wsproto = self._close_reason = self._stream = None
        self._send_lock = None  # renamed


def test_the_real_trio_websocket_has_what_the_data_framing_uses() -> None:
    check_send_binary(trio_websocket)  # (also done at import; raises if anything is missing)
    check_send_binary(fake_module("trio_websocket", "9.9", WebSocketConnection=SendingConnection))


def test_a_trio_websocket_that_renamed_its_send_lock_is_refused() -> None:
    module = fake_module("trio_websocket", "9.9", WebSocketConnection=SendingConnectionWithoutLock)
    with pytest.raises(IncompatibleDependency, match=r"pcapd expected WebSocketConnection\."
                       r"_stream_lock, an attribute set in __init__, .* one copy"):
        check_send_binary(module)


def test_a_trio_whose_ssl_stream_lost_its_ssl_object_is_refused() -> None:
    class SSLStream:
        def __init__(self) -> None:
            self._ssl = None

    with pytest.raises(IncompatibleDependency,
                       match=r"^trio 9\.9 \(trio\): pcapd expected SSLStream\._ssl_object, an "
                             r"attribute set in __init__, and it is missing; .*TLS records"):
        check_trio(fake_module("trio", "9.9", SSLStream=SSLStream))
    check_trio(trio)  # the real one passes


def test_the_failure_is_one_line_for_the_cli_and_an_import_error() -> None:
    assert issubclass(IncompatibleDependency, PcapdError)
    assert issubclass(IncompatibleDependency, ImportError)


def test_importing_the_transport_with_such_a_dependency_fails_at_once() -> None:
    root = str(Path(__file__).resolve().parents[2])
    code = (
        "import sys, types\n"
        "fake = types.ModuleType('trio_websocket'); fake.__version__ = '9.9'\n"
        "class WebSocketConnection: pass\n"
        "fake.WebSocketConnection = WebSocketConnection\n"
        "sys.modules['trio_websocket'] = fake\n"
        "import pcapd.transport._compat\n"
    )
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path}, check=False)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("pcapd.transport._compat.IncompatibleDependency: trio-websocket 9.9 "
                           "(trio_websocket): pcapd expected WebSocketConnection._send"), last


@pytest.mark.parametrize("dist", sorted(CHECKED_WITH))
def test_the_versions_checked_are_the_locked_ones(dist: str) -> None:
    """Updating the lock means looking at _compat.py again: this fails until someone does."""
    for lock in ("server.txt", "client.txt"):
        assert read_lock(LOCKS / lock)[dist].version == CHECKED_WITH[dist], lock


def test_a_trio_whose_ssl_stream_lost_a_name_of_the_send_path_is_refused() -> None:
    class SSLStream:
        def __init__(self) -> None:
            self._ssl_object = self._state = self._outgoing = self._inner_send_lock = None
            self._outer_send_conflict_detector = self.transport_stream = None
            self._pending_outgoing = None  # renamed from _delayed_outgoing

        def _check_status(self) -> None: ...

    with pytest.raises(IncompatibleDependency,
                       match=r"pcapd expected SSLStream\._delayed_outgoing, an attribute set in "
                             r"__init__, .* one loop turn"):
        check_trio(fake_module("trio", "9.9", SSLStream=SSLStream))
