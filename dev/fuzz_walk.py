#!/usr/bin/env python3
"""Fuzz the compiled pcapng walker under AddressSanitizer and UBSan, against its pure twin.

    dev/fuzz_walk.py --seconds 600            # build the sanitized walker, fuzz for 10 min
    dev/fuzz_walk.py --seconds 20 --seed 7    # the quick profile CI runs (tests/pcapng)

Builds ``pcapd/_ext/pcapngwalk.c`` with ``-fsanitize=address,undefined`` (every finding
aborts) into a scratch directory, then runs this script again with libasan preloaded (the
interpreter itself is not instrumented) to fuzz it: inputs are random bytes and mutations of
real pcapng files (the interop corpus beside the checkout, ``../shared/corpus/interop``, and
pcapd's own captures): byte flips, 32-bit fields set to edge values (lengths, ids, captured
lengths), cuts, splices and duplicated blocks. Each input goes to ``epb_run`` at every block
offset and to ``check_epbs``, in both C and Python; any difference is a failure too. Every
few walks, the same mutated files (one to four of them) go through ``pcapd merge``'s engine
(``FileMerge``, ``pcapd.merge.engine``), compiled and pure, with random read sizes, tie caps
and buffer caps: the outputs and results must be equal; and the C ``FileMerge`` gets hostile
calls (positions, maps, scales, stamps and blocks out of range, calls after its sources ended).
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
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "pcapd" / "_ext" / "pcapngwalk.c"
EDGES = [0, 1, 3, 4, 8, 12, 24, 28, 31, 32, 33, 36, 64, 0x7FFF, 0xFFFF, 0x10000, 1 << 24,
         (1 << 24) + 4, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFC, 0xFFFFFFFF]  # fmt: skip
SANITIZERS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
              "-fno-omit-frame-pointer", "-g", "-O1"]  # fmt: skip


def build(directory: Path, source: Path = SOURCE, name: str = "_pcapngwalk",
          libraries: tuple[str, ...] = ()) -> Path:
    """An extension (the walker by default) compiled with the sanitizers, as an importable
    module in ``directory`` (``dev/fuzz_recorder.py`` builds ``_recorder`` with ``pcap``)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    target = directory / f"{name}{suffix}"
    include = sysconfig.get_paths()["include"]
    subprocess.run(
        ["gcc", "-shared", "-fPIC", *SANITIZERS, "-Wall", "-Wextra", "-Werror",
         "-Wno-unused-parameter", "-Wno-missing-field-initializers", f"-I{include}",
         str(source), "-o", str(target), *(f"-l{lib}" for lib in libraries)],
        check=True,
    )  # fmt: skip
    return target


def sanitizer_runtime() -> str:
    return subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    ).stdout.strip()


def seeds(corpus: Path | None) -> list[bytes]:
    found = []
    if corpus is not None and corpus.is_dir():
        for path in sorted(corpus.rglob("*")):
            if path.is_file() and path.suffix in (".pcapng", ".ntar", ".pcap"):
                data = path.read_bytes()
                found.append(data[: 1 << 16])  # the start of big files: the fields that vary
    sys.path.insert(0, str(ROOT))
    from pcapd.pcapng import (  # noqa: PLC0415 (after the path is set)
        encode_enhanced_packet,
        encode_interface_description,
        encode_section_header,
    )

    head = encode_section_header() + encode_interface_description(link_type=1, snaplen=0)
    packets = b"".join(
        encode_enhanced_packet(interface_id=0, timestamp=i << 30, data=bytes(i % 97))
        for i in range(40)
    )
    found += [head + packets, packets]
    return found


def block_starts(data: bytes | bytearray, limit: int = 64) -> list[int]:
    starts, pos = [0], 0
    while pos + 8 <= len(data) and len(starts) < limit:
        (total,) = struct.unpack_from("<I", data, pos + 4)
        if total < 12 or total & 3:
            break
        pos += total
        starts.append(pos)
    return starts


def mutate(rng: random.Random, pool: list[bytes]) -> bytearray:
    data = bytearray(rng.choice(pool))
    if rng.random() < 0.1:
        return bytearray(rng.randbytes(rng.randrange(0, 512)))
    for _ in range(rng.randrange(1, 6)):
        choice = rng.random()
        starts = block_starts(data)
        if not data:
            data += rng.randbytes(rng.randrange(1, 64))
        elif choice < 0.35:  # a field of some block to an edge value
            at = rng.choice(starts) + rng.choice([4, 8, 20, 24, 12, 16])
            at = min(at, max(0, len(data) - 4)) & ~3
            if at + 4 <= len(data):
                struct.pack_into("<I", data, at, rng.choice(EDGES))
        elif choice < 0.55:
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.7:  # cut
            del data[rng.randrange(len(data)) :]
        elif choice < 0.85:  # splice another file's blocks in
            other = rng.choice(pool)
            a, b = sorted(rng.randrange(len(other) + 1) for _ in range(2))
            at = rng.choice(starts) if starts else 0
            data[at:at] = other[a & ~3 : b & ~3]
        elif len(starts) > 1:
            i = rng.randrange(len(starts) - 1)
            data[starts[i] : starts[i]] = data[starts[i] : starts[i + 1]]
    return data


def merge_both(
    compiled: object, rng: random.Random, files: list[bytes], scratch: Path
) -> str | None:
    """The files merged by the compiled and the pure engine; a description if they differ."""
    from pcapd.merge.engine import CompiledFileMerge, PureFileMerge  # noqa: PLC0415
    from pcapd.merge.files import MergeInputError, merge_files  # noqa: PLC0415

    paths = []
    for i, data in enumerate(files):
        path = scratch / f"in{i}.pcapng"
        path.write_bytes(data)
        paths.append(path)
    chunk = rng.choice([None, 64, 100, 256, 4096])
    tie_cap = rng.choice([0, 1, 3, 1 << 16])
    cap = rng.choice([None, None, 1, 2, 7, 50])
    answers: list[object] = []
    for which in ("compiled", "pure"):

        def engine(sources: int, max_buffered: int, tie_run_cap: int, which: str = which) -> object:
            if which == "pure":
                return PureFileMerge(sources, cap or max_buffered, tie_run_cap)
            return CompiledFileMerge(sources, cap or max_buffered, tie_run_cap, compiled)  # type: ignore[arg-type]

        out = scratch / "out.pcapng"
        try:
            result = merge_files(paths, out, chunk_size=chunk, engine=engine, tie_run_cap=tie_cap)  # type: ignore[arg-type]
            answers.append((result, out.read_bytes()))
        except MergeInputError as exc:
            answers.append(str(exc))
    if answers[0] != answers[1]:
        return f"chunk {chunk}, tie cap {tie_cap}, cap {cap}: " + " | ".join(
            data.hex() for data in files
        )
    return None


def hostile_calls(compiled: object, rng: random.Random, data: bytearray) -> None:
    """Calls of the C FileMerge with arguments out of range, in any order: errors, not crashes."""
    merge = compiled.FileMerge(rng.randrange(1, 4), rng.choice([1, 5, 1000]), rng.randrange(4))  # type: ignore[attr-defined]
    for _ in range(rng.randrange(1, 12)):
        choice = rng.random()
        source = rng.choice([0, 1, 2, -1, 7])
        try:
            if choice < 0.4:
                count = rng.choice([0, 1, 2, 3])
                mapping = [rng.choice([0, 1, 5, 0xFFFFFFFF, 1 << 32, -1]) for _ in range(count)]
                scales = [
                    (rng.choice([1, 1000, 10**9, 0, 1 << 40]),
                     rng.choice([1, 3, 10**100, 0, -1, 1 << 95]),
                     rng.choice([0, -(10**27), 10**27, 1 << 120]))
                    for _ in range(rng.choice([count, count, count + 1]))
                ]  # fmt: skip
                pos = rng.choice([0, 4, len(data) & ~3, len(data) + 4, rng.randrange(0, 64) & ~3])
                limit = rng.choice([32, 4096, 1 << 24])
                merge.add_run(source, mapping, scales, data, pos, limit, rng.choice([count, 1]))
            elif choice < 0.6:
                blocks = [bytes(rng.randrange(0, 40)) for _ in range(rng.randrange(0, 4))]
                stamps = [rng.choice([0, 1, -1, 1 << 70, -(1 << 99), 1 << 127]) for _ in blocks]
                if rng.random() < 0.1:
                    stamps.append(3)
                merge.add(source, blocks, stamps)
            elif choice < 0.7:
                merge.end(source)
            elif choice < 0.85:
                merge.pop()
            elif choice < 0.9:
                merge.flush()
            else:
                merge.frontier(source), merge.last_ns(source), merge.waiting, merge.reordered
        except (ValueError, TypeError, OverflowError, IndexError):
            pass


def fuzz(module_path: Path, seconds: float, seed: int, corpus: Path | None) -> int:
    spec = importlib.util.spec_from_file_location("_pcapngwalk", module_path)
    assert spec is not None and spec.loader is not None
    compiled = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compiled)
    sys.path.insert(0, str(ROOT))
    os.environ["PCAPD_NO_EXTENSIONS"] = "1"  # pcapd's own import: the pure twin only
    from pcapd.pcapng import packets  # noqa: PLC0415

    rng = random.Random(seed)
    pool = seeds(corpus)
    deadline = time.monotonic() + seconds
    runs = merges = 0
    scratch = module_path.parent / "merges"  # in the build's directory, which main() removes
    scratch.mkdir(exist_ok=True)
    while time.monotonic() < deadline:
        data = mutate(rng, pool)
        frozen = bytes(data)
        interfaces = rng.choice([0, 1, 2, 16, 1 << 32])
        limit = rng.choice([32, 4096, 1 << 24, (1 << 32) - 1])
        mapping = [rng.randrange(1 << 32) for _ in range(interfaces)] if interfaces < 17 else None
        for pos in [*block_starts(data, 16), rng.randrange(0, len(data) + 8) & ~3]:
            most = rng.choice([1, 2, 7, 1 << 16])
            got: list[object] = []
            for walk in (compiled.epb_run, None):
                buf = bytearray(frozen)
                try:
                    if walk is None:
                        run = packets.epb_run_pure(
                            buf, pos, most=most, max_block_size=limit, interfaces=interfaces,
                            interface_map=mapping,
                        )  # fmt: skip
                        high, low, ids = list(run.high), list(run.low), list(run.interface_ids)
                        got.append((run.blocks, high, low, ids, run.end, run.refused, bytes(buf)))
                    else:
                        b, h, lo, i, end, refused = walk(buf, pos, most, limit, interfaces, mapping)
                        got.append((b, h, lo, i, end, refused, bytes(buf)))
                except (ValueError, TypeError, IndexError, OverflowError) as exc:
                    got.append(type(exc).__name__)
            if pos <= len(frozen) and got[0] != got[1] and not (
                isinstance(got[0], str) or isinstance(got[1], str)
            ):
                print(f"DIFFERENCE at pos {pos} (seed {seed}, run {runs}): {frozen.hex()}")
                return 1
            runs += 1
        for interface_id in (0, 1):
            compiled.check_epbs(bytearray(frozen), interface_id, rng.choice([-1, 5]))
            compiled.check_epbs(frozen, interface_id, -1)
        hostile_calls(compiled, rng, data)
        if runs % 8 < 1:
            files = [bytes(data)] + [bytes(mutate(rng, pool)) for _ in range(rng.randrange(0, 4))]
            problem = merge_both(compiled, rng, files, scratch)
            merges += 1
            if problem is not None:
                print(f"DIFFERENCE in a merge (seed {seed}, run {runs}): {problem}")
                return 1
    print(f"fuzz_walk: {runs} walks and {merges} merges of {seconds:.0f} s (seed {seed}):"
          " no crash, no difference")
    return 0


def find_corpus(given: Path) -> Path:
    """``given``, or in a worktree the corpus beside the main checkout."""
    if given.is_dir():
        return given
    return next((p / "shared/corpus/interop" for p in ROOT.parents
                 if (p / "shared/corpus/interop").is_dir()), given)  # fmt: skip


def sanitized_env() -> dict[str, str]:
    """The environment of the fuzzing child: libasan preloaded, every report fatal."""
    return dict(os.environ, LD_PRELOAD=sanitizer_runtime(),
                ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
                UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared/corpus/interop")
    parser.add_argument("--module", type=Path, help=argparse.SUPPRESS)  # the sanitized run
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    corpus = find_corpus(args.corpus)
    if args.module:
        return fuzz(args.module, args.seconds, seed, corpus)
    with tempfile.TemporaryDirectory(prefix="fuzz_walk.") as scratch:
        module = build(Path(scratch))
        env = sanitized_env()
        return subprocess.run(
            [sys.executable, __file__, "--module", str(module), "--seconds", str(args.seconds),
             "--seed", str(seed), "--corpus", str(corpus)],
            env=env, check=False,
        ).returncode  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
