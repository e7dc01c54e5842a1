"""The filter-compiling child's own limits (``pcapd.agent.bpf._limit_self``), read back from
the kernel (``/proc/self/limits``) in a fresh interpreter, as the real child sets them."""

from __future__ import annotations

import re
import subprocess
import sys

from pcapd.agent.bpf import CPU_SECONDS, MEMORY

READ_BACK = ("from pcapd.agent.bpf import _limit_self; _limit_self(); "
             "print(open('/proc/self/limits').read())")


def child_limits() -> dict[str, tuple[str, str]]:
    """(soft, hard) by limit name, as the kernel reports them after ``_limit_self``."""
    done = subprocess.run([sys.executable, "-c", READ_BACK], capture_output=True, text=True,
                          check=True, timeout=30)
    rows = (re.split(r"\s{2,}", line.strip()) for line in done.stdout.splitlines()[1:])
    return {row[0]: (row[1], row[2]) for row in rows if len(row) >= 3}


def test_the_compiling_child_dumps_no_core_and_has_its_cpu_and_memory_limits() -> None:
    """SIGXCPU (the CPU limit ending a costly compile) dumps core by default: with a core
    limit of 0 no user's filter and compiler memory is written to disk."""
    limits = child_limits()
    assert limits["Max core file size"] == ("0", "0")
    assert limits["Max cpu time"] == (str(CPU_SECONDS), str(CPU_SECONDS + 1))
    assert limits["Max address space"] == (str(MEMORY), str(MEMORY))
