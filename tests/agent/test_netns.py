"""Namespace files are opened without following symbolic links (issue 12, hardening).

garden-cni bind-mounts each container's namespace into ``containers.netns_dir``; a symbolic
link there is someone pointing the agent at another namespace — ``/proc/<pid>/ns/net`` of any
process on the VM (here: the test's own, a real network namespace file).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pcapd.agent.netns import NamespaceError, call_in_netns, resolve_container_netns

GUID = "6f3c2a1e-0000-4000-8000-00000000abcd"


def test_a_symlink_to_a_real_namespace_is_refused(tmp_path: Path) -> None:
    own = Path(f"/proc/{os.getpid()}/ns/net")
    (tmp_path / GUID).symlink_to(own)
    with pytest.raises(NamespaceError, match="symbolic link") as info:
        resolve_container_netns(tmp_path, GUID)
    assert GUID in str(info.value)


def test_entering_through_a_symlink_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "ns"
    link.symlink_to(f"/proc/{os.getpid()}/ns/net")
    with pytest.raises(NamespaceError, match="cannot open"):
        call_in_netns(link, lambda: None)
