"""``pcapd merge``'s output file: it appears under its name only once complete, keeps what an
overwritten file had (its mode, a link's target), and names itself in every error.

Synchronous, on real files in a temporary directory; the whole command is tested in
``test_files.py``.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from pathlib import Path

import pytest

from pcapd.merge.output import MergeOutputError, Output, open_output


def test_the_file_appears_under_its_name_only_once_complete(tmp_path: Path) -> None:
    out = tmp_path / "out.pcapng"
    with open_output(str(out)) as fh:
        fh.write(b"first block")
        fh.flush()
        assert not out.exists()  # written under a hidden name beside it
        (hidden,) = tmp_path.iterdir()
        assert hidden.name.startswith(".out.pcapng.") and hidden.name.endswith(".tmp")
    assert out.read_bytes() == b"first block"
    assert list(tmp_path.iterdir()) == [out]


def test_a_failed_merge_leaves_the_previous_file_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "out.pcapng"
    out.write_bytes(b"yesterday's merge")
    with pytest.raises(RuntimeError, match="input broke"), open_output(str(out)) as fh:
        fh.write(b"half of today's")
        raise RuntimeError("input broke")
    assert out.read_bytes() == b"yesterday's merge"
    assert list(tmp_path.iterdir()) == [out]


def test_an_overwritten_file_keeps_its_mode_and_a_link_its_target(tmp_path: Path) -> None:
    target = tmp_path / "shared.pcapng"
    target.write_bytes(b"old")
    target.chmod(0o640)
    link = tmp_path / "latest.pcapng"
    link.symlink_to(target.name)
    with open_output(str(link)) as fh:
        fh.write(b"new")
    assert link.is_symlink() and os.readlink(link) == target.name
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_a_device_is_written_in_place() -> None:
    with open_output("/dev/null") as fh:
        fh.write(b"x" * 10)
    assert Path("/dev/null").is_char_device()  # not replaced by a regular file


def test_an_output_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no such dir" / "out.pcapng"
    with pytest.raises(MergeOutputError) as info, open_output(str(missing)):
        pass
    assert info.value.path == str(missing)
    assert str(info.value) == f"{missing}: cannot create: No such file or directory"


def test_a_reader_that_went_away_is_said_in_words() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    fh = io.BufferedWriter(io.FileIO(write_end, "wb"))
    output = Output(fh, "-")
    with pytest.raises(MergeOutputError,
                       match=r"^stdout: the reader went away \(broken pipe\)$"):
        output.write_blocks([b"x" * (1 << 20), b"y" * (1 << 20)])
    with contextlib.suppress(OSError):
        fh.close()


def test_interfaces_are_numbered_in_order_and_the_last_statistics_written_at_the_end() -> None:
    buffer = io.BytesIO()
    fh = io.BufferedWriter(buffer)
    output = Output(fh, "out.pcapng")
    assert [output.add_interface(b"IDB0"), output.add_interface(b"IDB1")] == [0, 1]
    output.keep_statistics(1, b"ISB1-old")
    output.write_blocks([b"EPB", b"EPB"])
    output.keep_statistics(0, b"ISB0")
    output.keep_statistics(1, b"ISB1")
    output.write_blocks([])
    output.finish()
    fh.flush()
    assert buffer.getvalue() == b"IDB0IDB1EPBEPBISB0ISB1"
    assert output.interfaces == 2
