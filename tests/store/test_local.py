"""The local-disk store: atomic commits, modes, isolation, signed links, the sweeper."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import trio
import trio.testing

from pcapd.config import LocalStorageConfig, parse_api_config
from pcapd.errors import PcapdError
from pcapd.store import (
    CaptureInfo,
    DownloadRefused,
    InvalidId,
    StoreError,
    capture_key,
    check_user_id,
    open_store,
)
from pcapd.store.local import LocalStore

NOW = 1_800_000_000.0
DAY = 86400.0


def cid(n: int) -> str:
    return f"{n:032x}"


def capture(capture_id: str, user: str = "alice", *, started: float = NOW,
            retention: float = 7 * DAY, **fields: Any) -> CaptureInfo:
    values: dict[str, Any] = {
        "capture_id": capture_id, "user_id": user, "user_name": user.title(),
        "target": "cf:my-app", "filter": "udp", "started_at": started, "ended_at": None,
        "packets": 0, "dropped": 0, "size": 0, "reason": "running",
        "expires_at": started + retention,
    }
    values.update(fields)
    return CaptureInfo(**values)


def ended(info: CaptureInfo, reason: str = "completed") -> CaptureInfo:
    return replace(info, ended_at=info.started_at + 10, packets=5, dropped=1, reason=reason)


def local_store(root: Path, *, clock: Callable[[], float] = lambda: NOW,
                **settings: Any) -> LocalStore:
    config = parse_api_config(
        {"id": "t", "agents": {"tls": {"certificate": "c", "private_key": "k", "ca": "a"}},
         "storage": {"kind": "local", "path": str(root), **settings}},
        require_platform=False,
    )
    assert isinstance(config.storage, LocalStorageConfig)
    store = open_store(config.storage, clock=clock)
    assert isinstance(store, LocalStore)
    return store


async def stored(store: LocalStore, info: CaptureInfo, *pieces: bytes) -> CaptureInfo:
    up = await store.open_upload(info)
    for piece in pieces:
        await up.write(piece)
    return await up.finish(ended(info))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: modes must come from the store, not from the umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- writing ------------------------------------------------------------------------------------


async def test_a_capture_appears_only_when_finished(root: Path) -> None:
    store = local_store(root)
    folder = root / "captures" / "alice"
    with trio.fail_after(10):
        await store.prepare()
        info = capture(cid(1))
        up = await store.open_upload(info)
        big = os.urandom(3 << 20)  # more than one flush
        await up.write(b"head")
        await up.write(big)
        await up.write(b"tail")
        # a crash now leaves only the .partial, which nothing shows
        assert sorted(p.name for p in folder.iterdir()) == [f"{cid(1)}.pcapng.partial"]
        assert await store.list("alice") == []
        assert await store.get("alice", cid(1)) is None
        final = await up.finish(ended(info, "limit"))
        assert final == replace(ended(info, "limit"), size=len(big) + 8)
        assert sorted(p.name for p in folder.iterdir()) == [f"{cid(1)}.json", f"{cid(1)}.pcapng"]
        assert (folder / f"{cid(1)}.pcapng").read_bytes() == b"head" + big + b"tail"
        assert await store.list("alice") == [final]
        assert await store.get("alice", cid(1)) == final


async def test_modes_are_0700_and_0600_whatever_the_umask(root: Path, open_umask: None) -> None:
    store = local_store(root)
    with trio.fail_after(10):
        await store.prepare()
        up = await store.open_upload(capture(cid(2)))
        partial = root / "captures" / "alice" / f"{cid(2)}.pcapng.partial"
        assert mode(partial) == 0o600
        await up.write(b"x")
        await up.finish(ended(capture(cid(2))))
    for folder in (root, root / "captures", root / "captures" / "alice"):
        assert mode(folder) == 0o700, folder
    for name in (f"{cid(2)}.pcapng", f"{cid(2)}.json"):
        assert mode(root / "captures" / "alice" / name) == 0o600, name


async def test_abort_removes_the_partial_file(root: Path) -> None:
    store = local_store(root)
    with trio.fail_after(10):
        up = await store.open_upload(capture(cid(3)))
        await up.write(b"half a block")
        await up.abort()
        assert list((root / "captures" / "alice").iterdir()) == []
        with pytest.raises(StoreError, match="has ended"):
            await up.write(b"more")


async def test_a_capture_id_is_used_once(root: Path) -> None:
    store = local_store(root)
    with trio.fail_after(10):
        await stored(store, capture(cid(4)), b"a")
        with pytest.raises(StoreError, match="already stored"):
            await store.open_upload(capture(cid(4)))
        assert (root / "captures" / "alice" / f"{cid(4)}.pcapng").read_bytes() == b"a"


async def test_prepare_names_the_key_when_the_directory_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    store = local_store(tmp_path / "file" / "store")
    with trio.fail_after(10), pytest.raises(StoreError, match=r"^storage.path: cannot create"):
        await store.prepare()


# -- isolation and path tricks ------------------------------------------------------------------


async def test_users_see_only_their_own_captures(root: Path) -> None:
    clock = [NOW]
    store = local_store(root, clock=lambda: clock[0])
    with trio.fail_after(10):
        a1 = await stored(store, capture(cid(10), "alice", started=NOW - 50), b"1")
        a2 = await stored(store, capture(cid(11), "alice", started=NOW - 10), b"2")
        b1 = await stored(store, capture(cid(12), "bob"), b"3")
        await stored(store, capture(cid(13), "alice", started=NOW - 8 * DAY), b"old")
        assert await store.list("alice") == [a2, a1]
        assert await store.list("bob") == [b1]
        assert await store.list("carol") == []
        assert await store.get("bob", cid(10)) is None
        assert await store.get("alice", cid(12)) is None
        assert await store.get("alice", cid(13)) is None  # expired, not yet swept
        # a record copied into another user's folder does not make it theirs
        folder = root / "captures" / "bob"
        for suffix in (".json", ".pcapng"):
            source = root / "captures" / "alice" / f"{cid(10)}{suffix}"
            (folder / f"{cid(10)}{suffix}").write_bytes(source.read_bytes())
        assert await store.get("bob", cid(10)) is None
        assert await store.list("bob") == [b1]


@pytest.mark.parametrize("user", ["..", ".", "a/b", "../alice", "", "x" * 129, "bob\n", "é"])
async def test_user_ids_that_could_leave_the_folder_are_refused(root: Path, user: str) -> None:
    store = local_store(root)
    with pytest.raises(ValueError, match="user id"):
        await store.open_upload(capture(cid(20), user))
    with pytest.raises(ValueError, match="user id"):
        await store.list(user)
    with pytest.raises(ValueError, match="user id"):
        await store.get(user, cid(20))
    assert not await trio.Path(root).exists()


def test_a_refused_id_is_a_value_error_and_a_pcapd_error() -> None:
    with pytest.raises(InvalidId) as refused:
        check_user_id("..")
    assert isinstance(refused.value, ValueError) and isinstance(refused.value, PcapdError)
    with pytest.raises(InvalidId, match="not a capture id"):
        capture_key("alice", "../etc")


@pytest.mark.parametrize("bad", ["../" + "0" * 29, "0" * 31, "A" * 32, "0" * 32 + "/x", ".."])
async def test_capture_ids_other_than_the_apis_are_refused(root: Path, bad: str) -> None:
    store = local_store(root)
    with pytest.raises(ValueError, match="not a capture id"):
        await store.open_upload(capture(bad))
    with pytest.raises(ValueError, match="not a capture id"):
        await store.get("alice", bad)
    with pytest.raises(DownloadRefused) as refused:
        await store.open_download(bad, int(NOW) + 60, "token", NOW)
    assert refused.value.status == 404


# -- download links -----------------------------------------------------------------------------


def link_parts(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    return parts.path.rpartition("/")[2], query["expires"][0], query["token"][0]


async def test_signed_links(root: Path) -> None:
    store = local_store(root, url_expiry=600)
    with trio.fail_after(10):
        info = await stored(store, capture(cid(30), "alice"), b"pcapng")
        other = await stored(store, capture(cid(31), "bob"), b"bob's")
        url, expires = await store.download_url(info, "https://pcap.example.com/", NOW)
        assert url.startswith(f"https://pcap.example.com/downloads/{cid(30)}?expires=")
        assert expires == NOW + 600
        capture_id, exp, token = link_parts(url)

        path, found = await store.open_download(capture_id, exp, token, NOW + 599)
        assert (path.read_bytes(), found) == (b"pcapng", info)
        assert (await store.open_download(capture_id, int(exp), token, NOW))[1] == info

        async def refused(capture_id: str, exp: str, token: str, now: float = NOW) -> int:
            with pytest.raises(DownloadRefused) as refusal:
                await store.open_download(capture_id, exp, token, now)
            return refusal.value.status

        tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
        assert await refused(capture_id, exp, tampered) == 403
        assert await refused(capture_id, str(int(exp) + 3600), token) == 403  # longer life
        assert await refused(cid(31), exp, token) == 403  # bob's capture, alice's link
        assert await refused(capture_id, exp, token, NOW + 600) == 403  # expired
        assert await refused(capture_id, "1e9", token) == 403
        assert await refused(capture_id, exp, "ü" * 43) == 403
        assert await refused(cid(32), exp, token) == 403  # no such capture: as bob's above
        assert other.user_id == "bob"


async def test_a_link_never_outlives_the_capture(root: Path) -> None:
    store = local_store(root, url_expiry=3600)
    with trio.fail_after(10):
        info = await stored(store, capture(cid(40), retention=DAY), b"x")
        _, expires = await store.download_url(info, "", info.expires_at - 100.5)
        assert expires == int(info.expires_at) <= info.expires_at
        with pytest.raises(DownloadRefused) as refusal:
            await store.download_url(info, "", info.expires_at - 0.5)
        assert refusal.value.status == 404


async def test_links_survive_a_restart_only_with_a_configured_secret(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-" + "x" * 25
    with trio.fail_after(10):
        first = local_store(root, download_secret=secret)
        info = await stored(first, capture(cid(50)), b"x")
        url, _ = await first.download_url(info, "", NOW)
        again = local_store(root, download_secret=secret)
        assert (await again.open_download(*link_parts(url), NOW))[1] == info

        caplog.set_level(logging.WARNING, "pcapd.store")
        ephemeral = local_store(root)
        await ephemeral.prepare()
        url, _ = await ephemeral.download_url(info, "", NOW)
        restarted = local_store(root)
        with pytest.raises(DownloadRefused) as refusal:
            await restarted.open_download(*link_parts(url), NOW)
        assert refusal.value.status == 403
    assert "storage.download_secret is not set" in caplog.text
    assert secret not in caplog.text and secret not in repr(first.__dict__)


# -- retention ----------------------------------------------------------------------------------


@pytest.fixture
def lazy_autojump_clock() -> trio.testing.MockClock:
    """Virtual time that jumps ahead only after 50 ms of real idleness: the sweeper waits for
    a worker thread, and a clock that jumped while it did would race the sweep."""
    return trio.testing.MockClock(autojump_threshold=0.05)


async def test_the_sweeper_deletes_at_the_right_virtual_time(
    root: Path, lazy_autojump_clock: trio.testing.MockClock
) -> None:
    """Sweeps at virtual 0, 3600, 7200, ...; the wall clock is NOW + virtual time. A capture
    that expires at 86500 goes in the sweep at 90000, a stale .partial with it."""
    store = local_store(root, clock=lambda: NOW + trio.current_time(), retention_days=1)
    folder = root / "captures" / "alice"
    with trio.fail_after(200_000):  # virtual seconds
        await store.prepare()
        async with trio.open_nursery() as nursery:
            await nursery.start(store.serve_maintenance)
            await trio.sleep(100)
            info = await stored(store, capture(cid(60), started=NOW + 100, retention=DAY), b"x")
            keep = await stored(store, capture(cid(61), started=NOW + 100, retention=2 * DAY),
                                b"y")
            crashed = folder / f"{cid(62)}.pcapng.partial"
            crashed.write_bytes(b"left by a crash")
            os.utime(crashed, (NOW + 50, NOW + 50))  # stale from NOW + 50 + 1 day = 86450
            assert info.expires_at == NOW + 86500

            await trio.sleep_until(89_999)
            stats = store.statistics()
            assert (stats.sweeps, stats.last_sweep_at) == (25, NOW + 86_400)  # 0 .. 86400
            assert (folder / f"{cid(60)}.pcapng").exists()
            assert crashed.exists()
            await trio.sleep_until(90_001)
            stats = store.statistics()
            assert (stats.sweeps, stats.last_sweep_at) == (26, NOW + 90_000)
            assert (stats.deleted_captures, stats.deleted_leftovers) == (1, 1)
            assert sorted(p.name for p in folder.iterdir()) == [
                f"{cid(61)}.json", f"{cid(61)}.pcapng"]
            assert await store.list("alice") == [keep]
            nursery.cancel_scope.cancel()


async def test_a_sweep_removes_orphans_but_not_running_uploads(root: Path) -> None:
    clock = [NOW]
    store = local_store(root, clock=lambda: clock[0], retention_days=1)
    folder = root / "captures" / "bob"
    with trio.fail_after(10):
        running = await store.open_upload(capture(cid(70), "bob"))
        await running.write(b"fresh")
        await stored(store, capture(cid(71), "bob"), b"z")
        orphan = folder / f"{cid(72)}.pcapng"  # renamed, record lost (edited by hand?)
        orphan.write_bytes(b"o")
        record_only = folder / f"{cid(73)}.json"  # a crash between record and rename
        record_only.write_bytes((folder / f"{cid(71)}.json").read_bytes()
                                .replace(cid(71).encode(), cid(73).encode()))
        temp = folder / f"{cid(74)}.json.tmp"
        temp.write_bytes(b"{")
        for path in (orphan, temp):
            os.utime(path, (NOW - DAY - 1, NOW - DAY - 1))
        clock[0] = NOW + 1  # nothing expired yet; the running upload's file is fresh
        os.utime(folder / f"{cid(70)}.pcapng.partial", (NOW, NOW))
        await store.sweep()
        assert sorted(p.name for p in folder.iterdir()) == sorted([
            f"{cid(70)}.pcapng.partial", f"{cid(71)}.json", f"{cid(71)}.pcapng",
            f"{cid(73)}.json"])
        clock[0] = NOW + 7 * DAY  # cid 71 and 73 expired
        os.utime(folder / f"{cid(70)}.pcapng.partial", (clock[0] - 60, clock[0] - 60))
        stats = await store.sweep()
        assert sorted(p.name for p in folder.iterdir()) == [f"{cid(70)}.pcapng.partial"]
        assert (stats.deleted_captures, stats.deleted_leftovers) == (1, 3)
        final = await running.finish(ended(capture(cid(70), "bob")))
        assert final.size == 5
        assert hashlib.sha256((folder / f"{cid(70)}.pcapng").read_bytes()).hexdigest() == (
            hashlib.sha256(b"fresh").hexdigest())


async def test_sweeping_a_missing_directory_is_quiet(root: Path) -> None:
    store = local_store(root)
    with trio.fail_after(10):
        stats = await store.sweep()
    assert (stats.sweeps, stats.deleted_captures, stats.deleted_leftovers) == (1, 0, 0)
