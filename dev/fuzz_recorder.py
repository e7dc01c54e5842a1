#!/usr/bin/env python3
"""Fuzz the flight recorder's C (``pcapd/_ext/recorder.c``) under ASan and UBSan, against its twins.

    dev/fuzz_recorder.py --seconds 600            # build it sanitized, fuzz for 10 min
    dev/fuzz_recorder.py --seconds 10 --seed 17   # the quick profile CI runs (tests/agent)

The sibling of ``dev/fuzz_walk.py`` (its build, seeds and mutations): ``recorder.c`` is built
with ``-fsanitize=address,undefined`` and libpcap into a scratch directory, then this script runs
again with libasan preloaded to fuzz its two functions, each next to the pure Python it replaces:

- ``epb_index`` (the ring's index of a batch, also of pieces read back from its segment files
  on disk) against ``pcapd.agent.ring._index`` with the extension off: mutated batches of EPBs
  (real packets of the interop corpus and pcapd's own, their fields set to edge values, cut,
  spliced, a block over ``MAX_EPB``), as bytes, bytearray and memoryview;
- ``match_epbs`` (the trigger filter) against ``pcapd.agent.matcher``'s pure path (its
  ``check_program``, then cypcap's ``offline_filter`` packet by packet): programs compiled by
  libpcap from real filters, and mutated ones (opcodes, jump offsets and ``k`` set to any
  value, instructions dropped or repeated). Both must refuse the same programs and, for the
  rest, answer the same timestamps, or refuse the same batches. The C alone also gets every
  program the pure check refuses (it must refuse them too, not run them).

Exit status 0: no crash, no sanitizer report, no difference; it prints executions and time.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fuzz_walk  # the sibling, found through the path above

ROOT = fuzz_walk.ROOT
SOURCE = ROOT / "pcapd" / "_ext" / "recorder.c"
FILTERS = ["udp", "tcp port 443", "udp dst port 53 or icmp", "ip[2:2] > 60", "len > 100",
           "vlan and udp", "tcp[13] & 2 != 0", "ip[0] & 0xf * 4 > 20", "net 198.18.0.0/15",
           "ip6 and tcp", "arp", "ip[6:2] & 0x1fff = 0", "udp[8:4] = 0xdeadbeef",
           "ip[0] >> 2 = 17", "portrange 1000-2000", "ip[2:2] / 4 = 10", "ip[2:2] % 4 = 1",
           "ip[2] ^ 3 = 0", "ip[2] - 3 = 1", "greater 500", "ether[0] & 1 = 1"]  # fmt: skip
K_EDGES = [0, 1, 2, 12, 14, 15, 16, 20, 23, 31, 32, 33, 0x7F, 0xFFFF, 0x7FFFFFFF, 0x80000000,
           0xFFFFFFF0, 0xFFFFFFFE, 0xFFFFFFFF]  # fmt: skip
_INSN = struct.Struct("=HBBI")


def epb(timestamp: int, data: bytes, caplen: int | None = None) -> bytes:
    """One little-endian EPB of interface 0, as the capture engine writes it."""
    cap = len(data) if caplen is None else caplen
    pad = -len(data) & 3
    total = 32 + len(data) + pad
    head = struct.pack("<IIIIIII", 6, total, 0, timestamp >> 32, timestamp & 0xFFFFFFFF, cap,
                       max(cap, len(data)))  # fmt: skip
    return head + data + bytes(pad) + struct.pack("<I", total)


def frame(rng: random.Random) -> bytes:
    """An Ethernet frame that filters care about: IPv4 or IPv6, UDP, TCP or ICMP, any ports."""
    proto = rng.choice([1, 6, 17, 58])
    ports = struct.pack(">HH", rng.choice([53, 443, 1500, rng.randrange(65536)]),
                        rng.choice([53, 443, 1999, rng.randrange(65536)]))  # fmt: skip
    body = ports + rng.randbytes(rng.randrange(0, 80))
    if rng.random() < 0.7:
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, rng.choice([0, 0x2000]),
                         64, proto, 0, bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2]))
        return bytes(6) + bytes(6) + b"\x08\x00" + ip + body
    ip6 = struct.pack(">IHBB16s16s", 6 << 28, len(body), proto, 64, bytes(16), bytes(16))
    return bytes(6) + bytes(6) + b"\x86\xdd" + ip6 + body


def batches(rng: random.Random, corpus: Path | None) -> list[bytes]:
    """Seeds: batches of EPBs of interface 0, from the corpus's packets and made up."""
    pool = []
    for data in fuzz_walk.seeds(corpus):
        found = []
        for start in fuzz_walk.block_starts(data, 64)[:-1]:
            if data[start : start + 4] != b"\x06\x00\x00\x00" or start + 32 > len(data):
                continue
            (total,) = struct.unpack_from("<I", data, start + 4)
            block = bytearray(data[start : start + total])
            if len(block) == total:
                struct.pack_into("<I", block, 8, 0)
                found.append(bytes(block))
        if found:
            pool.append(b"".join(found))
    for _ in range(16):
        stamp = rng.randrange(1 << 62)
        pool.append(b"".join(epb(stamp + rng.randrange(-5, 1000), frame(rng))
                             for _ in range(rng.randrange(1, 30))))  # fmt: skip
    return pool


def mutate_batch(rng: random.Random, pool: list[bytes]) -> bytearray:
    if rng.random() < 0.02:  # a whole block over MAX_EPB: refused alike
        big = epb(rng.randrange(1 << 40), bytes(rng.choice([262_145, 262_148, 300_000])))
        return bytearray(rng.choice(pool) + big)
    data = fuzz_walk.mutate(rng, pool)
    if rng.random() < 0.2 and data:  # ordered or not: a timestamp somewhere else
        starts = fuzz_walk.block_starts(data, 32)
        at = rng.choice(starts) + rng.choice([12, 16])
        if at + 4 <= len(data):
            struct.pack_into("<I", data, at, rng.choice([0, 1, 0xFFFFFFFF, rng.randrange(1 << 32)]))
    return data


def mutate_program(rng: random.Random, rows: list[tuple[int, int, int, int]],
                   codes: list[int]) -> list[tuple[int, int, int, int]]:
    rows = list(rows)
    for _ in range(rng.randrange(1, 4)):
        if not rows:
            rows.append((6, 0, 0, 0))
        i = rng.randrange(len(rows))
        code, jt, jf, k = rows[i]
        choice = rng.random()
        if choice < 0.3:
            wide = rng.random() < 0.1  # opcodes are 16 bits; the interpreter's fit in 8
            code = rng.choice(codes) if rng.random() < 0.6 else rng.randrange(
                1 << 16 if wide else 256)
        elif choice < 0.5:
            jt, jf = rng.choice([jt, rng.randrange(256)]), rng.choice([jf, rng.randrange(256)])
        elif choice < 0.6:  # a jump whose 32-bit offset wraps around to a target inside
            code, k = 0x05, (1 << 32) - (i + 1) + rng.randrange(len(rows))
        elif choice < 0.8:
            k = rng.choice([*K_EDGES, len(rows) - i - 1, len(rows) - i - 2, rng.randrange(1 << 32)])
        elif choice < 0.9 and len(rows) > 1:
            del rows[i]
            continue
        else:
            rows.insert(i, rows[i])
            continue
        rows[i] = (code, jt, jf, k & 0xFFFFFFFF)
    return rows


def pure_index(ring: Any, data: bytes) -> object:
    try:
        stamps, ends, in_order = ring._index(data)
    except ring.RingError as exc:
        return ("refused", str(exc))
    return list(stamps), list(ends), in_order


def compiled_index(compiled: Any, data: bytes | bytearray | memoryview) -> object:
    try:
        raw_stamps, raw_ends, in_order = compiled.epb_index(data)
    except ValueError as exc:
        return ("refused", str(exc))
    stamps = list(memoryview(raw_stamps).cast("Q"))
    return stamps, list(memoryview(raw_ends).cast("Q")), bool(in_order)


def fuzz(module_path: Path, seconds: float, seed: int, corpus: Path | None) -> int:
    spec = importlib.util.spec_from_file_location("_recorder", module_path)
    assert spec is not None and spec.loader is not None
    compiled: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compiled)
    sys.path.insert(0, str(ROOT))
    os.environ["PCAPD_NO_EXTENSIONS"] = "1"  # pcapd's own import: the pure twins only
    from pcapd.agent import ring  # noqa: PLC0415
    from pcapd.agent.bpf import HandleError, compile_program  # noqa: PLC0415
    from pcapd.agent.matcher import Matcher, check_program  # noqa: PLC0415

    rng = random.Random(seed)
    pool = batches(rng, corpus)
    programs: list[list[tuple[int, int, int, int]]] = []
    for expr in FILTERS:
        _, text = compile_program(expr, (), 1, 65535, split=False)
        assert text is not None
        programs.append([tuple(map(int, row.split())) for row in text.split(",")[1:]])  # type: ignore[misc]
    codes = sorted({row[0] for rows in programs for row in rows} | {0x05, 0x0E, 0x21, 0x84})
    deadline = time.monotonic() + seconds
    indexes = matches = refused = 0
    while time.monotonic() < deadline:
        data = bytes(mutate_batch(rng, pool))
        if data:
            want = pure_index(ring, data)
            for shape in (data, bytearray(data), memoryview(data)):
                got = compiled_index(compiled, shape)
                if got != want:
                    print(f"DIFFERENCE in epb_index (seed {seed}, after {indexes} indexes): "
                          f"C {got!r:.300} pure {want!r:.300}; input {data.hex()}")
                    return 1
            indexes += 1
        rows = rng.choice(programs)
        if rng.random() < 0.6:
            rows = mutate_program(rng, rows, codes)
        insns = b"".join(_INSN.pack(*row) for row in rows)
        text = f"{len(rows)}," + ",".join(" ".join(map(str, row)) for row in rows)
        try:
            check_program(insns)
            pure_ok = True
        except HandleError:
            pure_ok = False
        try:
            compiled.match_epbs(insns, b"")
            c_ok = True
        except ValueError:
            c_ok = False
        if pure_ok != c_ok:
            print(f"DIFFERENCE in the program checks (seed {seed}, after {matches} matches): "
                  f"C accepts {c_ok}, pure {pure_ok}: {text}")
            return 1
        if not pure_ok:
            refused += 1
            continue
        for blocks in (data, rng.choice(pool)):
            try:
                got: object = compiled.match_epbs(insns, blocks)
            except ValueError:
                got = "refused"
            try:
                want = Matcher(text).matches(blocks)
            except HandleError:
                want = "refused"
            if not blocks and got == []:
                got = want  # Matcher answers an empty batch before it looks at the program
            if got != want:
                print(f"DIFFERENCE in match_epbs (seed {seed}, after {matches} matches): "
                      f"C {got!r:.300} pure {want!r:.300}; program {text}; blocks {blocks.hex()}")
                return 1
            matches += 1
    print(f"fuzz_recorder: {indexes} indexes, {matches} matches and {refused} refused programs "
          f"of {seconds:.0f} s (seed {seed}): no crash, no difference")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared/corpus/interop")
    parser.add_argument("--module", type=Path, help=argparse.SUPPRESS)  # the sanitized run
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    corpus = fuzz_walk.find_corpus(args.corpus)
    if args.module:
        return fuzz(args.module, args.seconds, seed, corpus)
    with tempfile.TemporaryDirectory(prefix="fuzz_recorder.") as scratch:
        module = fuzz_walk.build(Path(scratch), SOURCE, "_recorder", ("pcap",))
        return subprocess.run(
            [sys.executable, __file__, "--module", str(module), "--seconds", str(args.seconds),
             "--seed", str(seed), "--corpus", str(corpus)],
            env=fuzz_walk.sanitized_env(), check=False,
        ).returncode  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
