"""Owners of different kinds never share captures (issue 12, hole 8), and captures stored
before owners had kinds go to whom they can be proven to belong — nobody else."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path

from pcapd.api.upload import legacy_owner_key, owned_capture, owned_captures, owner_key
from pcapd.store import CaptureInfo
from pcapd.store.local import LocalStore
from pcapd.tokens import Identity

ISSUER = "https://uaa.sys.example.com/oauth/token"
ALICE_ID = "1b754c54-db37-44b3-9f52-fef0c3b94842"
ALICE = Identity(user_id=ALICE_ID, user_name="alice", client_id="cf",
                 scopes=frozenset(), expires_at=0, issuer=ISSUER)
IMPOSTOR = Identity(user_id=ALICE_ID, user_name=ALICE_ID, client_id=ALICE_ID,
                    scopes=frozenset(), expires_at=0, issuer=ISSUER, is_client=True)


async def store(folder: LocalStore, owner: str, user_name: str) -> CaptureInfo:
    now = time.time()
    info = CaptureInfo(capture_id=uuid.uuid4().hex, user_id=owner, user_name=user_name,
                       target="cf:app", filter="", started_at=now, ended_at=None, packets=0,
                       dropped=0, size=0, reason="running", expires_at=now + 3600)
    upload = await folder.open_upload(info)
    await upload.write(b"\x0a\x0d\x0d\x0a")
    return await upload.finish(replace(info, reason="completed", ended_at=now))


def test_a_user_and_a_client_of_the_same_id_are_two_owners() -> None:
    assert owner_key(ALICE) != owner_key(IMPOSTOR)
    assert legacy_owner_key(IMPOSTOR) is None
    assert "." not in (legacy_owner_key(ALICE) or ".")  # old keys can never equal new ones


async def test_captures_from_before_kinds_go_only_to_their_provable_owner(
        tmp_path: Path) -> None:
    folder = LocalStore(tmp_path, retention_days=1)
    legacy = legacy_owner_key(ALICE)
    assert legacy is not None
    alices_old = await store(folder, legacy, "alice")  # made by alice before the change
    clients_old = await store(folder, legacy, ALICE_ID)  # by a client with alice's id
    alices_new = await store(folder, owner_key(ALICE), "alice")
    clients_new = await store(folder, owner_key(IMPOSTOR), ALICE_ID)
    assert {i.capture_id for i in await owned_captures(folder, ALICE)} == {
        alices_old.capture_id, alices_new.capture_id}
    assert [i.capture_id for i in await owned_captures(folder, IMPOSTOR)] == [
        clients_new.capture_id]
    assert await owned_capture(folder, ALICE, clients_old.capture_id) is None
    assert await owned_capture(folder, ALICE, clients_new.capture_id) is None
    assert await owned_capture(folder, IMPOSTOR, alices_old.capture_id) is None
    assert await owned_capture(folder, ALICE, alices_old.capture_id) == alices_old
