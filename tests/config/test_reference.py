"""The config reference page, rendered from the config Structs: what each row says comes from
the model (types, defaults, docstrings, the comments beside a field), and the CLI that writes
and checks the page."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from pcapd.config import model, reference

SOURCE = '''\
Bytes = Annotated[int, Meta(ge=1)]  # bytes


class Buffer(msgspec.Struct):
    # packets it holds,
    # at most
    size: Bytes = 1  # before dropping

    # a note about the next field, but a blank line apart

    upper: int = 2
    lower: int = 3  # lower
'''


def test_a_fields_note_is_the_comment_block_above_it_then_the_one_beside_it() -> None:
    notes = reference.read_source_notes(SOURCE)
    assert notes.fields == {("Buffer", "size"): "packets it holds, at most before dropping",
                            ("Buffer", "lower"): "lower"}
    assert notes.aliases == {"Bytes": "bytes"}
    assert notes.annotations[("Buffer", "size")] == {"Bytes"}


def test_the_page_takes_its_words_from_the_models_source() -> None:
    source = inspect.getsource(model)
    old = "# how long the merge waits for a silent stream before moving on"
    assert old in source
    page = reference.render(source.replace(old, "# a note only this test writes"))
    assert "| `merge.lateness` | number greater than 0 | `1` | a note only this test writes |" \
        in page.splitlines()


@pytest.mark.parametrize("row", [
    "| `id` | non-empty string | **required** | the origin shown to users, e.g. "
    "router/d55baeba-... |",  # a required value: its Meta description
    "| `storage.kind` | `s3` | **required** | picks this kind of `storage` |",
    "| `storage.secret_key` | non-empty string (secret: never logged or shown) | **required** | "
    "its secret key (in BOSH: from CredHub) |",
    "| `cf.require_ssh_enabled` | `true` or `false` | `false` | also require `cf ssh` to be "
    "allowed for the app (global, space and app flags) |",
    "| `storage.part_size` | integer between 5242880 (5 MiB) and 5368709120 (5 GiB) | "
    "`5242880 (5 MiB)` | multipart part size; an upload holds about 3 in memory; bytes; S3's "
    "multipart part limits |",  # the alias's comment (PartSize) follows the field's
])
def test_rows_say_type_default_and_purpose(row: str) -> None:
    assert row in reference.render().splitlines()


def test_a_section_links_to_its_table_and_an_optional_one_says_how_to_turn_it_off() -> None:
    page = reference.render()
    assert "| `storage` | section: [local](#api-storage-kind-local) or [s3](#api-storage-kind-s3)" \
        " | **required** |" in page
    [cf] = [line for line in page.splitlines() if line.startswith("| `cf` |")]
    assert cf.startswith("| `cf` | [section](#api-cf) | not set | Cloud Foundry: ")
    assert cf.endswith("; optional: leave it out to turn it off |")


def test_every_section_is_linked_and_every_link_names_a_heading() -> None:
    page = reference.render()
    headings = {reference.slug(line.lstrip("#")) for line in page.splitlines()
                if line.startswith("#")}
    links = set(re.findall(r"\]\(#([^)]+)\)", page))
    assert links == headings - {"config-reference"}  # all but the page's title


def test_slugs_follow_github() -> None:
    assert reference.slug("api: `storage` (kind: s3)") == "api-storage-kind-s3"
    assert reference.slug("`CONGESTED`") == "congested"
    assert reference.slug("Limits and sizing — buffers") == "limits-and-sizing--buffers"


def test_write_then_check_and_a_stale_or_missing_page_fails_the_check(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "config-reference.md"
    assert reference.main(["--write", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == reference.render()
    assert reference.main(["--check", str(page)]) == 0
    assert capsys.readouterr().err == f"{page}: up to date\n"
    page.write_text(reference.render().replace("| `id` |", "| `name` |"), encoding="utf-8")
    assert reference.main(["--check", str(page)]) == 1
    assert capsys.readouterr().err == (
        f"{page} is out of date: run python -m pcapd.config.reference --write {page}\n")
    assert reference.main(["--check", str(tmp_path / "missing.md")]) == 1
    assert capsys.readouterr().err == f"{tmp_path / 'missing.md'}: cannot read (No such file " \
        "or directory)\n"


def test_without_arguments_the_page_goes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert reference.main([]) == 0
    assert capsys.readouterr().out == reference.render()
