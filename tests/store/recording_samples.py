"""A recording record of every field, for the tests of the format (test_recordings.py) and of
the stores that keep it (test_recording_store.py)."""

from __future__ import annotations

import json
from typing import Any

from pcapd.store.recordings import (
    CfRecordingTarget,
    Recording,
    RecordingAgent,
    Trigger,
    encode_recording,
)

NOW = 1_800_000_000.0
ALICE = "0123456789ab.user.alice-guid"
BOB = "0123456789ab.user.bob-guid"
ROBOT = "0123456789ab.client.alice-guid"  # a client whose id equals alice's user id


def recording(owner: str = ALICE, *, n: int = 1, created: float = NOW, **fields: Any
              ) -> Recording:
    values: dict[str, Any] = {
        "recording_id": f"{n:032x}", "owner": owner, "user_name": "alice",
        "target": CfRecordingTarget(org_guid="org-1", space_guid="space-1",
                                    app_guid="app-guid-1", app_name="my-app",
                                    instances=[0, 1]),
        "label": "cf:my-org/my-space/my-app", "device": "eth0", "filter": "tcp port 443",
        "snaplen": 65535, "keep": 600.0, "max_bytes": 256_000_000, "created_at": created,
        "ends_at": created + 86400, "trigger": Trigger(filter="tcp[tcpflags] & tcp-rst != 0",
                                                       after=30.0),
        "agents": [
            RecordingAgent(origin="my-app/0", address="10.0.16.4:9494",
                           namespace="11111111-2222", recording_id="r-1"),
            RecordingAgent(origin="my-app/1", address="10.0.16.5:9494",
                           namespace="33333333-4444", recording_id="r-2"),
        ],
    }
    values.update(fields)
    return Recording(**values)


def as_json(rec: Recording) -> dict[str, Any]:
    value = json.loads(encode_recording(rec))
    assert isinstance(value, dict)
    return value
