"""The docs are tested: every marked shell block runs, every link resolves, nothing is stale.

Conventions (docs/README.md explains them to writers):

- ``<!-- test -->`` on the line before a fenced shell block: the block runs, and must exit 0.
  Options after a colon: ``exit=N`` (the exit status it must end with instead), ``timeout=S``,
  ``name=NAME`` (a handle for the checks below).
- ``<!-- output -->`` before the fenced block that follows a tested one: what that run printed
  (stdout and stderr together). Each non-empty line must appear, in order, as a whole line of
  the output; ``...`` inside a line stands for any text.
- ``<!-- platform -->``: a Cloud Foundry or BOSH block; it runs against the test landscape
  (fake UAA, Cloud Controller and BOSH director, the real api and agents), with the
  substitutions ``tests/docs/test_platform_blocks.py`` states (the api URL, the login, the
  id a reader copies). Options as for ``test``.
- ``<!-- example: WHY -->``: shown, not run: it installs on a laptop, deploys with BOSH, or
  needs a display. Each one is in ``tests/docs/test_examples.py``'s list with the reason, and
  its command lines are checked there (pcapd's own parser accepts them; other programs and
  their flags exist).
- ``<!-- setup -->``: the install commands, which CI itself runs first (``.ci/run`` runs
  ``dev/test``, which runs ``dev/setup``); checked to be nothing else.

Every ``sh``/``bash``/``console``/``shell`` block in the guides carries one of these markers.
The exit-status table of the user guide lists exactly the ``EXIT_*`` statuses of
``pcapd/cli.py``, and the README names them all.

How a block runs: as root, with ``bash -euo pipefail``, from a scratch directory that looks
like a fresh clone (the repository's tracked top-level entries and ``.venv`` linked in), with
``.venv/bin`` on ``PATH`` and ``HOME`` inside the scratch directory. Each block gets private
mount, network and pid namespaces (``unshare``): ``/run/netns`` is an empty tmpfs, the network
holds only ``lo``, and every process the block leaves behind dies with it. So blocks may name
namespaces ``blue`` and listen on fixed ports without touching the machine or each other; files
stay in the scratch directory, shared by the blocks of one document in order.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pcapd.config import reference
from pcapd.proto import CODES

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GUIDES = ("README.md", "architecture.md", "user-guide.md", "operator-guide.md", "security.md",
          "troubleshooting.md", "3am-checklist.md", "maintaining.md")
"""The documents whose shell blocks must all be marked (the older design notes are free)."""
SHELLS = {"sh", "bash", "console", "shell"}
DEFAULT_TIMEOUT = 120.0
BLOCK_TOOLS = ("unshare", "setpriv", "ip", "curl", "tshark", "capinfos")
"""What the tested blocks run besides pcapd and bash."""

_MARKER = re.compile(r"<!--\s*(test|platform|output|example|setup)\s*(?::\s*(.*?))?\s*-->")
RUN = ("test", "platform")
"""The markers of blocks that run (here, or against the landscape)."""
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^`\s]*)[^`]*$")


# -- reading Markdown ------------------------------------------------------------------------


@dataclass
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    info: str
    text: str
    marker: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    output: Block | None = None

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    @property
    def exit_status(self) -> int:
        return int(self.options.get("exit", "0"))

    @property
    def timeout(self) -> float:
        return float(self.options.get("timeout", DEFAULT_TIMEOUT))


def fenced_blocks(doc: Path) -> list[Block]:
    """Every fenced code block of ``doc``, with the marker on the line before it."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = match.groups()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence)
                                      and lines[j].strip().strip(fence[0]) == ""):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        block = Block(doc, i + 1, info, "\n".join(body) + "\n")
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = _MARKER.fullmatch(lines[k].strip()) if k >= 0 else None
        if marker:
            block.marker = marker.group(1)
            block.options = _options(marker.group(1), marker.group(2) or "")
        blocks.append(block)
        i = j + 1
    for previous, block in itertools.pairwise(blocks):
        if block.marker == "output" and previous.marker in RUN:
            previous.output = block
    return blocks


def _options(kind: str, text: str) -> dict[str, str]:
    if kind == "example":
        return {"why": text}
    options = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"marker option {word!r}: expected KEY=VALUE")
        options[key] = value
    return options


def guides() -> list[Path]:
    """The repository's README and the guides in docs/."""
    return [ROOT / "README.md", *(DOCS / name for name in GUIDES)]


def runnable_blocks() -> list[Block]:
    return [b for doc in guides() if doc.exists() for b in fenced_blocks(doc)
            if b.marker == "test"]


def commands(text: str) -> list[str]:
    """The block's command lines: continuations joined; blank and comment lines left out."""
    joined: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line, pending = pending + raw, ""
        if line.strip() and not line.lstrip().startswith("#"):
            joined.append(line.strip())
    return joined


def simple_commands(line: str) -> list[list[str]]:
    """The words of each simple command of a shell line (split at ``|``, ``&&``, ``||``,
    ``;``, quotes respected, comments dropped): what the parts of a pipeline run."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    found: list[list[str]] = [[]]
    for word in lexer:
        if word in ("|", "||", "&&", ";", "&"):
            found.append([])
        else:
            found[-1].append(word)
    return [words for words in found if words]


# -- running blocks --------------------------------------------------------------------------


@dataclass
class Run:
    status: int
    output: str


def _fresh_clone(scratch: Path) -> None:
    """Links to what a clone holds (tracked top-level entries) plus the set-up ``.venv``."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    names = {line.split("/", 1)[0] for line in listed.stdout.splitlines()} \
        if listed.returncode == 0 else {p.name for p in ROOT.iterdir() if p.name != ".git"}
    for name in sorted(names | {".venv"}):
        if (ROOT / name).exists():
            (scratch / name).symlink_to(ROOT / name)
    (scratch / ".home").mkdir()
    (scratch / ".tmp").mkdir()


_PRELUDE = """\
set -euo pipefail
mkdir -p /run/netns
mount -t tmpfs pcapd-docs /run/netns
ip link set lo up
cd "$1"
exec bash -euo pipefail "$2"
"""


class DocRun:
    """The blocks of one document, run in order in one scratch directory."""

    def __init__(self, doc: Path, scratch: Path) -> None:
        self.doc = doc
        self.scratch = scratch
        _fresh_clone(scratch)
        self.blocks = [b for b in fenced_blocks(doc) if b.marker == "test"]
        self.runs: dict[int, Run] = {}

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PCAPD_API", "CF_HOME", "BOSH_CONFIG", "BOSH_ENVIRONMENT",
                            "VIRTUAL_ENV", "PYTHONPATH")}
        env.update(HOME=str(self.scratch / ".home"), TMPDIR=str(self.scratch / ".tmp"),
                   COLUMNS="200", LC_ALL="C.UTF-8",
                   PATH=f"{self.scratch / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}")
        return env

    def run_through(self, block: Block) -> Run:
        """Run every block up to ``block`` that has not run yet; ``block``'s result."""
        for earlier in self.blocks:
            if earlier.line not in self.runs:
                self.runs[earlier.line] = self._run(earlier)
            if earlier.line == block.line:
                return self.runs[earlier.line]
            if not _passed(earlier, self.runs[earlier.line]):
                pytest.fail(f"an earlier block failed: {earlier.where}")
        raise AssertionError(f"{block.where} is not a tested block")

    def _run(self, block: Block) -> Run:
        script = self.scratch / f".block-{block.line}.sh"
        script.write_text(block.text, encoding="utf-8")
        argv = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child",
                "--mount-proc", "--propagation", "private",
                "bash", "-c", _PRELUDE, "prelude", str(self.scratch), str(script)]
        try:
            done = subprocess.run(argv, env=self.env(), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=block.timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            partial = (exc.stdout or b"").decode("utf-8", "replace")
            return Run(-1, partial + f"\n[timed out after {block.timeout:g}s]")
        return Run(done.returncode, done.stdout.decode("utf-8", "replace"))


def _passed(block: Block, run: Run) -> bool:
    return run.status == block.exit_status and (
        block.output is None or missing_output(block.output.text, run.output) is None)


def missing_output(expected: str, actual: str) -> str | None:
    """The first expected line not found (in order) in ``actual``; None when all are."""
    lines = [_spaced(line) for line in actual.splitlines()]
    position = 0
    for want in (_spaced(w) for w in expected.splitlines()):
        if not want:
            continue
        pattern = re.compile(".*".join(re.escape(part.strip()) for part in want.split("...")))
        while position < len(lines) and not pattern.fullmatch(lines[position]):
            position += 1
        if position == len(lines):
            return want
        position += 1
    return None


class DocRuns:
    """One :class:`DocRun` per document, made on first use."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self._factory = factory
        self._runs: dict[Path, DocRun] = {}

    def __getitem__(self, doc: Path) -> DocRun:
        if doc not in self._runs:
            self._runs[doc] = DocRun(doc, self._factory.mktemp(doc.stem))
        return self._runs[doc]


def _spaced(line: str) -> str:
    """Runs of blanks (tshark's tabs and column padding) as one space; no blanks at the ends."""
    return " ".join(line.split())


@pytest.fixture(scope="session")
def doc_runs(tmp_path_factory: pytest.TempPathFactory) -> DocRuns:
    return DocRuns(tmp_path_factory)


def _block_id(block: Block) -> str:
    name = block.options.get("name")
    return f"{block.doc.relative_to(ROOT)}:{block.line}" + (f":{name}" if name else "")


@pytest.mark.root
@pytest.mark.tools
@pytest.mark.parametrize("block", runnable_blocks(), ids=_block_id)
def test_block_runs(block: Block, doc_runs: DocRuns) -> None:
    missing = [tool for tool in BLOCK_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"the docs' commands need {', '.join(missing)} (packages util-linux, "
                    "iproute2, curl, tshark): install them")
    run = doc_runs[block.doc].run_through(block)
    shown = f"--- {block.where} ---\n{block.text}--- output (exit {run.status}) ---\n{run.output}"
    assert run.status == block.exit_status, \
        f"expected exit status {block.exit_status}, got {run.status}\n{shown}"
    if block.output is not None:
        missing = missing_output(block.output.text, run.output)
        assert missing is None, \
            f"{block.output.where}: this line is not in the output: {missing!r}\n{shown}"


@pytest.mark.root
@pytest.mark.tools
def test_first_capture_opens_in_tshark(doc_runs: DocRuns) -> None:
    """The user guide's walk-through, from a fresh clone: a pcapng that tshark reads, with
    packets in it — the issue's "done when"."""
    guide = DOCS / "user-guide.md"
    [block] = [b for b in fenced_blocks(guide) if b.options.get("name") == "first-capture"]
    docs = doc_runs[guide]
    run = docs.run_through(block)
    assert run.status == 0, run.output
    capture = docs.scratch / "first.pcapng"
    shown = subprocess.run(["tshark", "-r", str(capture)], capture_output=True, text=True,
                           check=True)
    packets = [line for line in shown.stdout.splitlines() if "UDP" in line]
    assert len(packets) >= 5, shown.stdout
    info = subprocess.run(["capinfos", "-c", str(capture)], capture_output=True, text=True,
                          check=True)
    assert "Number of packets:" in info.stdout


# -- checks without running anything ---------------------------------------------------------


def test_every_shell_block_is_marked() -> None:
    unmarked = [b.where for doc in guides() for b in fenced_blocks(doc)
                if b.info in SHELLS and b.marker not in ("test", "platform", "example", "setup")]
    assert not unmarked, ("shell blocks without <!-- test -->, <!-- platform -->, "
                          f"<!-- example: WHY --> or <!-- setup -->: {unmarked}")


def test_markers_are_well_formed() -> None:
    problems = []
    for doc in guides():
        blocks = fenced_blocks(doc)
        for block in blocks:
            if block.marker == "example" and not block.options.get("why"):
                problems.append(f"{block.where}: say why it is not run: <!-- example: WHY -->")
            if block.marker == "output" and not any(b.output is block for b in blocks):
                problems.append(f"{block.where}: <!-- output --> must follow a tested block")
            if block.marker in RUN and block.info not in SHELLS:
                problems.append(f"{block.where}: only shell blocks run (info string sh)")
    assert not problems


_SETUP_COMMANDS = {("dev/setup",), ("dev/setup", "dev"), ("dev/test",)}


def test_setup_blocks_are_what_ci_runs() -> None:
    """``<!-- setup -->`` blocks hold only dev/setup and dev/test (optionally with sudo), which
    CI runs on a fresh clone before these tests; what they leave behind is checked here."""
    blocks = [b for doc in guides() for b in fenced_blocks(doc) if b.marker == "setup"]
    assert blocks, "the user guide's install step is marked <!-- setup -->"
    for block in blocks:
        for line in block.text.splitlines():
            setup = line.split("&&")[0]  # `dev/setup && <the main job>`: see the next test
            words = tuple(w for w in shlex.split(setup, comments=True) if w != "sudo")
            if words and words not in _SETUP_COMMANDS and words[:1] != ("cd",):
                pytest.fail(f"{block.where}: {line!r} is not a command CI runs")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "dev/test" in ci and "dev/setup" in (ROOT / "dev" / "test").read_text()
    version = subprocess.run([str(ROOT / ".venv" / "bin" / "pcapd"), "version"],
                             capture_output=True, text=True, check=False)
    assert version.returncode == 0 and version.stdout.startswith("pcapd ")


@pytest.mark.root
def test_the_quick_starts_main_job_runs_as_written(tmp_path: Path) -> None:
    """What follows ``dev/setup &&`` in a setup block (the README's quick start) runs as
    written, from a directory of its own, and leaves a file the real readers take."""
    jobs = [(b, part) for doc in guides() for b in fenced_blocks(doc) if b.marker == "setup"
            for line in b.text.splitlines() for part in line.split("&&")[1:]]
    assert jobs, "the README's quick start runs the main job after dev/setup"
    for block, command in jobs:
        words = [w for w in shlex.split(command) if w != "sudo"]
        assert words[:3] == [".venv/bin/pcapd", "capture", "local"], f"{block.where}: {command}"
        done = subprocess.run([str(ROOT / words[0]), *words[1:]], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{block.where}: {done.stderr}"
        written = tmp_path / words[words.index("-w") + 1]
        info = subprocess.run(["capinfos", "-c", str(written)], capture_output=True,
                              text=True, timeout=60, check=False)
        assert info.returncode == 0 and "Number of packets" in info.stdout, info.stderr
        written.unlink()


def test_config_reference_is_up_to_date() -> None:
    page = (DOCS / "config-reference.md").read_text(encoding="utf-8")
    assert page == reference.render(), \
        "docs/config-reference.md is stale: python -m pcapd.config.reference --write " \
        "docs/config-reference.md"


def test_config_reference_describes_every_key() -> None:
    """A key without a word about it means a field without a comment in the model."""
    notes = reference.read_source_notes(Path(reference.model.__file__).read_text())
    bare = [f"{role}: {row.key}" for role, root, _ in reference.ROLES
            for section in reference.walk(role, root, notes) for row in section.rows
            if not row.text]
    assert not bare, f"add a comment to these fields in {reference.SOURCE}: {bare}"


def test_every_message_code_is_in_the_user_guide() -> None:
    guide = (DOCS / "user-guide.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^#{2,4} `([A-Z_]+)`", guide, flags=re.MULTILINE))
    missing = [code for code in CODES if code not in headings]
    assert not missing, f"docs/user-guide.md has no '### `CODE`' section for {missing}"
    unknown = sorted(headings - set(CODES))
    assert not unknown, f"docs/user-guide.md documents codes pcapd does not have: {unknown}"


# -- links -----------------------------------------------------------------------------------

_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def _without_code(text: str) -> str:
    """The text with fenced blocks and inline code blanked (links there are not links)."""
    out, fence = [], ""
    for line in text.splitlines():
        match = _FENCE.match(line)
        if fence:
            if line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
                fence = ""
            out.append("")
            continue
        if match:
            fence = match.group(2)
            out.append("")
            continue
        out.append(re.sub(r"`[^`]*`", "``", line))
    return "\n".join(out)


def anchors(doc: Path) -> set[str]:
    """The anchors GitHub makes for ``doc``'s headings (and explicit ``<a id>``)."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    fence = ""
    for line in doc.read_text(encoding="utf-8").splitlines():
        match = _FENCE.match(line)
        if fence:
            if line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
                fence = ""
            continue
        if match:
            fence = match.group(2)
            continue
        found.update(_HTML_ANCHOR.findall(line))
        heading = _HEADING.match(line)
        if heading:
            text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(2))
            base = reference.slug(text)
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def _link_docs() -> list[Path]:
    return [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]


@pytest.mark.parametrize("doc", _link_docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_internal_links_resolve(doc: Path) -> None:
    broken = []
    text = _without_code(doc.read_text(encoding="utf-8"))
    for target in _LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{doc.relative_to(ROOT)}: {broken}"


def test_the_tests_security_md_cites_exist() -> None:
    """Each threat's row names the test that covers it: ``tests/x.py``, ``tests/x.py::test_y``,
    ``::test_z`` (the file named before it in the row) or a bare ``test_y`` (any test file).
    A renamed or removed test must take its citation with it."""
    def defines(files: list[Path], name: str) -> bool:
        pattern = re.compile(rf"^\s*(async )?def {re.escape(name)}\b", re.MULTILINE)
        return any(pattern.search(f.read_text(encoding="utf-8")) for f in files)

    every_test = sorted((ROOT / "tests").rglob("test_*.py"))
    stale = []
    for number, line in enumerate((DOCS / "security.md").read_text().splitlines(), 1):
        last: Path | None = None
        for cited in re.findall(r"`([^`\s]+)`", line):
            if cited.startswith("tests/"):
                path, _, name = cited.partition("::")
                last = ROOT / path
                if not last.exists():
                    stale.append(f"line {number}: {cited}: no such file or directory")
                elif name and not defines([last], name):
                    stale.append(f"line {number}: {cited}: no such test")
            elif cited.startswith("::test_") and last is not None:
                if not defines([last], cited[2:]):
                    stale.append(f"line {number}: {cited}: no such test in {last.name}")
            elif re.fullmatch(r"test_\w+", cited) and not defines(every_test, cited):
                stale.append(f"line {number}: {cited}: no such test")
    assert not stale, "docs/security.md cites tests that do not exist:\n" + "\n".join(stale)


def test_output_matching() -> None:
    actual = "capturing 1 source: host:lo\n  1 0.0 127.0.0.1 → 127.0.0.1 UDP 48 1 → 9999\ndone\n"
    assert missing_output("capturing 1 source: ...\n1 ... UDP ... → 9999\n", actual) is None
    assert missing_output("done\ncapturing ...\n", actual) == "capturing ..."
    assert missing_output("UDP\n", actual) == "UDP"  # whole lines only
    assert missing_output("a ... b\n", "a\t\tb\n") is None  # blanks are blanks


# -- the exit statuses -------------------------------------------------------------------------

EXIT_MEANINGS = {
    "EXIT_OK": ("complete",),
    "EXIT_FAILED": ("could not start",),
    "EXIT_USAGE": ("usage error",),
    "EXIT_PARTIAL": ("partial",),
    "EXIT_DAMAGED_INPUT": ("merge", "damage"),
    "EXIT_INTERRUPTED": ("SIGINT", "before the capture had started"),
}
"""Words the user guide's row for each ``EXIT_*`` status of pcapd/cli.py must hold."""


def exit_statuses() -> dict[int, str]:
    """pcapd/cli.py's ``EXIT_*`` constants: status → name."""
    from pcapd import cli

    return {value: name for name, value in vars(cli).items()
            if name.startswith("EXIT_") and isinstance(value, int)}


def exit_status_table() -> dict[int, str]:
    """The user guide's "Exit status" table: status → the row's text."""
    text = (DOCS / "user-guide.md").read_text(encoding="utf-8")
    section = text.split("\n## Exit status\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*(\d+)\s*\|(.*)\|\s*$", section, flags=re.MULTILINE)
    table: dict[int, str] = {}
    for status, meaning in rows:
        assert int(status) not in table, f"the exit-status table has {status} twice"
        table[int(status)] = meaning
    return table


def test_exit_status_table_lists_exactly_the_clis_statuses() -> None:
    statuses, table = exit_statuses(), exit_status_table()
    assert sorted(table) == sorted(statuses), (
        f"docs/user-guide.md#exit-status lists {sorted(table)}, pcapd/cli.py defines "
        f"{ {v: k for k, v in sorted(statuses.items())} }")
    for status, name in statuses.items():
        words = EXIT_MEANINGS.get(name)
        assert words is not None, f"{name}: add the words its row must say to EXIT_MEANINGS"
        missing = [w for w in words if w not in table[status]]
        assert not missing, f"the user guide's row for exit status {status} ({name}) " \
                            f"does not say {missing}: {table[status]}"


def test_readme_names_every_exit_status() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    paragraph = " ".join(readme.split("\nExit status: ", 1)[1].split("\n\n", 1)[0].split())
    named = {int(n) for n in re.findall(r"(?:^|[;:] )(\d+) ", paragraph)}
    assert named == set(exit_statuses()), \
        f"README's exit statuses {sorted(named)}, pcapd/cli.py's {sorted(exit_statuses())}"
