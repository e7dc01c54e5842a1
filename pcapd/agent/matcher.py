"""The flight recorder's trigger filter: a BPF program run by pcapd on every captured packet.

libpcap's interpreter (``bpf_filter``, as ``pcap_offline_filter``) runs a program compiled by
the limited child of :mod:`.bpf_worker` over a batch of EPBs: in one C call where the extension
is built (:mod:`pcapd._accel`), else through cypcap one packet at a time. The program is
checked before it runs either way (:func:`check_program`: only opcodes the interpreter
implements, jumps forward inside it, a return at its end, scratch memory in range), as
anything crossing a process boundary is, and every block is bounds-checked.
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

# The opcodes libpcap's interpreter (bpf_filter) implements, by what their ``k`` must be. Only
# these: libpcap 1.10's bpf_validate checks an instruction's class and mode, not its opcode,
# and bpf_filter abort()s on one it lacks (LDX|W|ABS, RET|X). pcapd/_ext/recorder.c has the same
# table (its check_program); libpcap's newer validator (pcapint_valid_insn) has the same list.
_ANY_K = frozenset({
    0x06, 0x16,  # RET K, A
    0x20, 0x28, 0x30, 0x40, 0x48, 0x50,  # LD W, H, B by ABS and IND
    0x80, 0x81, 0xB1, 0x00, 0x01,  # LD LEN, LDX LEN, LDX MSH, LD IMM, LDX IMM
    0x04, 0x0C, 0x14, 0x1C, 0x24, 0x2C, 0x3C, 0x9C,  # ALU ADD, SUB, MUL; DIV X, MOD X
    0x44, 0x4C, 0x54, 0x5C, 0xA4, 0xAC, 0x6C, 0x7C, 0x84,  # OR, AND, XOR; LSH X, RSH X; NEG
    0x07, 0x87,  # MISC TAX, TXA
})  # fmt: skip
_MEMORY = frozenset({0x60, 0x61, 0x02, 0x03})  # LD MEM, LDX MEM, ST, STX: k < 16
_DIVIDE = frozenset({0x34, 0x94})  # ALU DIV K, MOD K: k != 0
_SHIFT = frozenset({0x64, 0x74})  # ALU LSH K, RSH K: k < 32
_JUMP_IF = frozenset({0x15, 0x25, 0x35, 0x45, 0x1D, 0x2D, 0x3D, 0x4D})  # JEQ, JGT, JGE, JSET
_JUMP = 0x05  # JA


def _valid(i: int, n: int, code: int, jt: int, jf: int, k: int) -> bool:
    if code in _ANY_K:
        return True
    if code in _MEMORY:
        return k < _MEMWORDS
    if code in _DIVIDE:
        return k != 0
    if code in _SHIFT:
        return k < 32
    if code == _JUMP:
        return i + 1 + k < n  # forward only: no wrap-around in Python's integers
    if code in _JUMP_IF:
        return i + 1 + jt < n and i + 1 + jf < n
    return False


def check_program(insns: bytes) -> None:
    """Raise :class:`HandleError` unless every instruction of ``insns`` is one libpcap's
    interpreter runs, every jump lands forward inside the program, no scratch memory slot is
    loaded before every path to the load stored it (libpcap 1.10's interpreter leaves them
    uninitialised: such a load reads its stack), and it ends with a return.

    Stricter than libpcap 1.10's ``bpf_validate`` (see ``_ANY_K``), and the same rules as the
    compiled matcher's own check (``pcapd/_ext/recorder.c``), so both paths refuse alike.
    """
    rows = [_INSN.unpack_from(insns, i) for i in range(0, len(insns), _INSN.size)]
    n = len(rows)
    stored = [0] + [0xFFFF] * n  # scratch slots stored on every path to each instruction
    for i, (code, jt, jf, k) in enumerate(rows):
        have = stored[i]
        if not _valid(i, n, code, jt, jf, k) or (code in (0x60, 0x61) and not have >> k & 1):
            raise HandleError(f"the trigger's BPF program is not valid (instruction {i})")
        if code in (0x02, 0x03):
            have |= 1 << k
        if code & 0x07 == 0x06:  # BPF_RET: no successor
            continue
        for after in ((k,) if code == _JUMP else (jt, jf) if code in _JUMP_IF else (0,)):
            stored[i + 1 + after] &= have
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
