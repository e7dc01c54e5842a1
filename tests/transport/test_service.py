"""What the agent and the api do at start, before they serve: the open-files limit."""

from __future__ import annotations

import resource
import subprocess
import sys


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    """Every connection costs a descriptor, idle ones too: a service starting under the usual
    soft limit (1024) raises it to what the hard limit (LimitNOFILE=, bpm) allows."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = min(1024, hard)

    def lowered() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    code = ("import resource; from pcapd.transport.service import raise_open_files_limit; "
            "print(raise_open_files_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))")
    done = subprocess.run([sys.executable, "-c", code], preexec_fn=lowered,
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == [str(hard)] * 3
