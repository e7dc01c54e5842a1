"""The flight recorder's trigger filter: a BPF program run by pcapd on every captured packet.

libpcap's interpreter (``bpf_filter``, as ``pcap_offline_filter``) runs a program compiled by
the limited child of :mod:`.bpf_worker` over a batch of EPBs: in one C call where the extension
is built (:mod:`pcapd._accel`), else through cypcap one packet at a time. The program is
checked before it runs either way (jumps inside it, a return at its end, scratch memory in
range), as anything crossing a process boundary is, and every block is bounds-checked.
"""

from __future__ import annotations

import struct
from typing import Any

import cypcap

from pcapd import _accel
from pcapd.agent.bpf import HandleError, program_bytes
from pcapd.agent.ring import MAX_EPB
from pcapd.pcapng.packets import epb_run

_INSN = struct.Struct("=HBBI")
_MEMWORDS = 16
_EPB_LENGTHS = struct.Struct("<II")


def check_program(insns: bytes) -> None:
    """Raise :class:`HandleError` unless ``insns`` passes libpcap's ``bpf_validate`` rules."""
    rows = [_INSN.unpack_from(insns, i) for i in range(0, len(insns), _INSN.size)]
    n = len(rows)
    for i, (code, jt, jf, k) in enumerate(rows):
        cls, op = code & 0x07, code & 0xF0
        if cls == 0x05:  # BPF_JMP
            targets = [i + 1 + k] if op == 0x00 else [i + 1 + jt, i + 1 + jf]
            bad = any(t >= n for t in targets)
        elif cls in (0x02, 0x03) or (cls in (0x00, 0x01) and code & 0xE0 == 0x60):
            bad = k >= _MEMWORDS  # BPF_ST, BPF_STX, or BPF_LD|LDX of BPF_MEM: scratch memory
        elif cls == 0x04 and op in (0x30, 0x90) and code & 0x08 == 0:  # BPF_DIV, MOD by K
            bad = k == 0
        else:
            bad = False
        if bad:
            raise HandleError(f"the trigger's BPF program is not valid (instruction {i})")
    if not n or rows[-1][0] & 0x07 != 0x06:  # must end with BPF_RET
        raise HandleError("the trigger's BPF program does not end with a return")


class Matcher:
    """``matches(blocks)``: the timestamps of the packets of ``blocks`` the trigger accepts."""

    def __init__(self, program: str) -> None:
        self._insns = program_bytes(program)
        check_program(self._insns)
        self._program: Any = None if _accel.recorder else cypcap.BpfProgram.loads(program)

    def matches(self, blocks: bytes) -> list[int]:
        if not blocks:
            return []
        if _accel.recorder is not None:
            try:
                return list(_accel.recorder.match_epbs(self._insns, blocks))
            except ValueError as exc:
                raise HandleError(f"trigger filter: {exc}") from None
        run = epb_run(blocks, 0, most=len(blocks) // 32 + 1, max_block_size=MAX_EPB,
                      interfaces=1)
        if run.end != len(blocks):
            raise HandleError(f"trigger filter: not a whole EPB at byte {run.end}")
        found = []
        offline_filter = self._program.offline_filter
        for block, high, low in zip(run.blocks, run.high, run.low, strict=True):
            caplen, length = _EPB_LENGTHS.unpack_from(block, 20)
            header = cypcap.Pkthdr(0.0, caplen, max(caplen, length))
            if offline_filter(header, block[28:28 + caplen]):
                found.append(high << 32 | low)
        return found
