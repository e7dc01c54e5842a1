"""The shell blocks the docs tests cannot run (``<!-- example: WHY -->``), each listed here
with the reason, and their command lines checked as far as a machine without a display, a
laptop's home directory or a BOSH director allows.

Everything else runs: ``<!-- test -->`` blocks in ``test_docs.py``, ``<!-- platform -->``
blocks against the landscape in ``test_platform_blocks.py``. The check of an example, line by
line and command by command (pipelines and ``&&`` split):

- ``pcapd …`` (also ``.venv/bin/pcapd``): pcapd's real parser (``pcapd.cli.build_parser``,
  with the dialects it applies) accepts the words: every flag exists, values parse, nothing
  contradicts;
- a script of the repository (``dev/lock``): it exists, and every ``--flag`` used is in its
  text (its usage comment; running ``--help`` would run it);
- another program: on ``PATH`` or in ``.venv/bin``, and every ``--flag`` used is in its
  ``--help`` (``python -m build --help``, ``twine check --help``) — unless the entry names it
  as a program of the reader's machine that CI does not have (``wireshark``, ``bosh``,
  ``pipx``);
- a file argument inside the repository (``requirements/client.txt``, ``release/manifests/…``)
  exists.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from pcapd.cli import build_parser
from tests.docs.test_docs import ROOT, Block, commands, fenced_blocks, guides, simple_commands


@dataclass(frozen=True)
class Exempt:
    why: str
    outside: tuple[str, ...] = ()
    """Programs the reader's machine has and CI does not (their flags are not checked)."""


EXEMPT: dict[tuple[str, str], Exempt] = {
    ("README.md", ".venv/bin/pcapd capture local -i lo -w - | wireshark -k -i -"): Exempt(
        "Wireshark needs a display, and a local capture runs until Wireshark is closed (the "
        "same pipe into tshark is a tested block of the user guide)", ("wireshark",)),
    ("docs/user-guide.md", "pcapd capture local -i lo -w - | wireshark -k -i -"): Exempt(
        "Wireshark needs a display, and a local capture runs until Wireshark is closed (the "
        "tshark equivalent is tested above it)", ("wireshark",)),
    ("docs/user-guide.md",
     "pipx install .                         # or: pipx install pcapd-0.1.0-py3-none-any.whl"):
        Exempt("installs into the reader's home directory from the package index (the "
               "client-only install from the lock is tests/e2e/test_client_install.py)",
               ("pipx", "~/.pcapd/bin/pip")),
    ("docs/operator-guide.md", "# the agents: everywhere on this director ..."): Exempt(
        "deploys to a BOSH director with CredHub (the manifests and ops files are rendered "
        "and checked by tests/release)", ("bosh",)),
    ("docs/maintaining.md",
     "dev/check-latest                    # the checks on the newest releases; which update "
     "breaks what"): Exempt(
        "needs the package index and takes as long as the whole suite; dev/lock rewrites "
        "requirements/ in the checkout"),
    ("docs/maintaining.md",
     "PCAPD_NO_EXTENSIONS=1 .venv/bin/python -m build --no-isolation"):
        Exempt("writes dist/ in the checkout and installs into the reader's home (the build "
               "is tests/release/test_build_artefacts.py)", ("pipx",)),
}
"""(document, the block's first line) → why it is not run, and what it calls that CI lacks."""

def example_blocks() -> list[Block]:
    return [b for doc in guides() if doc.exists() for b in fenced_blocks(doc)
            if b.marker == "example"]


def _key(block: Block) -> tuple[str, str]:
    return str(block.doc.relative_to(ROOT)), block.text.splitlines()[0]


def test_every_example_is_listed_with_its_reason() -> None:
    found = {_key(b): b.where for b in example_blocks()}
    unlisted = [where for key, where in found.items() if key not in EXEMPT]
    assert not unlisted, ("run these (<!-- test --> or <!-- platform -->), or add them to "
                          f"EXEMPT with the reason they cannot run: {unlisted}")
    stale = [key for key in EXEMPT if key not in found]
    assert not stale, f"EXEMPT lists blocks that are no longer examples: {stale}"


def pcapd_refusal(words: list[str], monkeypatch: pytest.MonkeyPatch) -> str | None:
    """What pcapd's parser says about ``pcapd WORDS`` (None: accepted), in a clean
    environment (no BOSH_* or PCAPD_API of the machine running the tests)."""
    for name in ("PCAPD_API", "BOSH_ENVIRONMENT", "BOSH_DEPLOYMENT", "CF_HOME", "BOSH_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(words)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return said.getvalue().strip() or f"exit {exc.code}"
    return None


def _long_flags(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("--")]


def _help_argv(words: list[str]) -> list[str]:
    """How to ask the program of ``words`` for the help that lists its flags:
    ``python -m build --help``, ``twine check --help``."""
    asked = [words[0]]
    rest = iter(words[1:])
    for word in rest:
        if word == "-m":
            asked += [word, next(rest)]
        elif word.startswith("-"):
            break
        else:
            asked.append(word)
    while len(asked) > 1 and ("/" in asked[-1] or "." in asked[-1] or "*" in asked[-1]):
        asked.pop()  # a file argument, not a subcommand
    return [*asked, "--help"]


ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")


def argv_problems(line: str, entry: Exempt, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    problems = []
    for command in simple_commands(line):
        # the shell's `NAME=value program …`: the assignments are the program's environment
        words = list(itertools.dropwhile(ENV_ASSIGNMENT.fullmatch, command))
        program = words[0]
        if Path(program).name == "pcapd":
            refused = pcapd_refusal(words[1:], monkeypatch)
            if refused:
                problems.append(f"{' '.join(words)}: pcapd refuses it: {refused}")
        elif program in entry.outside:
            pass
        elif (ROOT / program).is_file() and not program.startswith(".venv/"):
            text = (ROOT / program).read_text(encoding="utf-8")
            problems += [f"{program} {flag}: not in {program}" for flag in _long_flags(words)
                         if flag not in text]
        else:
            found = (str(ROOT / program) if (ROOT / program).is_file()
                     else shutil.which(program, path=f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin"))
            if found is None:
                problems.append(f"{program}: not installed here; if only the reader has it, "
                                "name it in the entry's outside")
                continue
            flags = _long_flags(words)
            if flags:
                helped = subprocess.run([found, *_help_argv(words)[1:]], capture_output=True,
                                        text=True, timeout=60, check=False, cwd=ROOT)
                problems += [f"{' '.join(words)}: {flag} is not in its --help" for flag in flags
                             if flag not in helped.stdout + helped.stderr]
        for word in words[1:]:
            first = word.split("/", 1)[0]
            if ("/" in word and "*" not in word and (ROOT / first).is_dir()
                    and not first.startswith(".") and not (ROOT / word).exists()):
                problems.append(f"{' '.join(words)}: {word} is not in the repository")
    return problems


@pytest.mark.parametrize("block", example_blocks(), ids=lambda b: b.where)
def test_example_command_lines_are_accepted(block: Block,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    entry = EXEMPT.get(_key(block))
    if entry is None:
        pytest.fail(f"{block.where} is not in EXEMPT (see the test above)")
    problems = [p for line in commands(block.text) for p in argv_problems(line, entry,
                                                                         monkeypatch)]
    assert not problems, f"{block.where}:\n" + "\n".join(problems)


def test_the_argv_check_refuses_what_pcapd_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: an unknown flag, a bad value, a missing repository file, a flag
    a program does not have."""
    entry = Exempt("test", ("wireshark",))
    assert argv_problems("pcapd capture local -i lo -w - | wireshark -k -i -", entry,
                         monkeypatch) == []
    [unknown] = argv_problems("pcapd capture local --no-such-flag", entry, monkeypatch)
    assert "unrecognized arguments: --no-such-flag" in unknown
    [duration] = argv_problems("pcapd capture cf my-app --duration soon", entry, monkeypatch)
    assert "not a duration" in duration
    [missing] = argv_problems("git diff requirements/none.txt", entry, monkeypatch)
    assert "requirements/none.txt is not in the repository" in missing
    [flag] = argv_problems("dev/lock --downgrade", entry, monkeypatch)
    assert "--downgrade: not in dev/lock" in flag
    [help_flag] = argv_problems(".venv/bin/twine check --lenient dist/*", entry, monkeypatch)
    assert "--lenient is not in its --help" in help_flag
