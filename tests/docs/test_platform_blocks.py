"""The guides' Cloud Foundry and BOSH commands run as written, against the e2e landscape.

A ``<!-- platform -->`` block (docs/README.md) is what a user types against a foundation with
pcapd deployed. Here it runs against the landscape of ``tests/e2e/platform_landscape.py``: the
fakes of UAA, Cloud Controller and the BOSH director as real HTTP servers, the real ``pcapd
api`` on loopback and real ``pcapd agent`` processes in network namespaces (three Diego cells,
four VMs). The landscape holds what the guides name:

- app ``my-app`` in org ``org``, space ``dev``: three ``web`` and three ``worker`` instances,
  each container with ``lo`` and an ``eth0`` (a veth to its cell, as Diego wires it);
- deployment ``cf`` with groups ``router`` and ``diego-cell``, two VMs each, with the
  instance ids the user guide shows;
- the api's ``limits.max_duration`` is 2 s, an operator's setting: a capture the guide runs
  for five minutes (or until Ctrl-C, or until Wireshark closes) ends after 2 s, as the api
  says when it starts (``limits: 2s (the api's maximum; you asked 5m)``).

What the test changes in the text, and nothing else (each command is shown as run when it
fails):

- the api URL: ``https://pcap.sys.example.com`` and ``https://pcap.example.com`` become the
  landscape's api; ``PCAPD_API`` (documented: the api's URL) is set to it as well, since there
  is no ``pcap.<system domain>`` to derive from the cf target;
- the login: lines running ``cf login``/``cf target`` or ``bosh … log-in`` are skipped: the
  environment is logged in already as those commands leave it (``CF_HOME`` with alice, a
  developer of ``org/dev``; ``BOSH_CONFIG`` with environment ``lab`` and bob, ``bosh.admin``;
  ``BOSH_ENVIRONMENT=lab`` as a bbl environment sets it);
- the ids a reader copies from the line before: ``ID`` and the guide's example id
  ``4f2a9c0e…`` become the id the last ``--upload`` or ``record start`` printed, the prefixes
  ``4f2a``/``3f2a`` its first four characters;
- ``wireshark -k -i -`` becomes ``tshark -i -``: there is no display in CI, and tshark reads
  the pipe with the same dumpcap as Wireshark does.

Each command runs with ``bash -o pipefail`` in one scratch directory per document (later
blocks use earlier blocks' files, as the checklist's merge does) and must exit 0 (or the
block's ``exit=N``); every file a ``-w FILE`` names must then be a pcapng capinfos reads.
Blocks with a ``name=`` get the checks below of what the document says they produce.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.docs.test_docs import (
    ROOT,
    Block,
    commands,
    fenced_blocks,
    guides,
    missing_output,
    simple_commands,
)
from tests.e2e.platform_landscape import Landscape, developer_tokens
from tests.fakes import BOB
from tests.netns import ip
from tests.readers import run_tool

pytestmark = [pytest.mark.root, pytest.mark.tools]

ROUTERS = ["d55baeba-6a1c-4c35-9d38-13ae6e1b1a3e", "1f0b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"]
"""The router instance ids of the user guide's example."""
DIEGO_CELLS = ["5e8f1a2b-3c4d-4e6f-8a9b-0c1d2e3f4a5b", "a3b8d1b6-0b3b-4b1a-9c1a-1a2b3c4d5e6f"]
"""The diego-cell instance ids (the user guide names diego-cell/a3b8d1b6-…)."""
API_URLS = ("https://pcap.sys.example.com", "https://pcap.example.com")
LOGIN = re.compile(r"^\s*(cf\s+(login|target)\b|bosh\s+(-e\s+\S+\s+)?log-in\b)")
FULL_ID = "4f2a9c0e1d2b4a5f8e7d6c5b4a392817"
PREFIXES = ("4f2a", "3f2a")
NEW_ID = re.compile(r"\b[0-9a-f]{32}\b")
WIRESHARK = ("wireshark -k -i -", "tshark -i -")
EXPORT = re.compile(r"export\s+([A-Z_][A-Z0-9_]*)=(\S+)")


def platform_blocks() -> list[Block]:
    return [b for doc in guides() if doc.exists() for b in fenced_blocks(doc)
            if b.marker == "platform"]


# -- the landscape -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def landscape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Landscape]:
    with Landscape(tmp_path_factory.mktemp("docs-landscape"), cells=3, vms=4,
                   api_settings={"limits": {"max_duration": 2}}) as built:
        built.deploy_app("my-app", instances=3, processes={"worker": 3})
        for cell in built.cells:
            for container in cell.containers.values():
                _wire_eth0(cell.host.ns.name, container.name)
        built.deploy_groups("cf", {"router": ROUTERS, "diego-cell": DIEGO_CELLS}, teams=[])
        yield built


def _wire_eth0(cell: str, container: str) -> None:
    """The container's ``eth0``: a veth whose other end is in its cell, both up (Diego's
    wiring, without addresses: the docs' captures only need the device)."""
    outside = f"pcv{uuid.uuid4().hex[:10]}"
    ip("link", "add", outside, "netns", cell, "type", "veth", "peer", "name", "eth0",
       "netns", container)
    ip("-n", cell, "link", "set", outside, "up")
    ip("-n", container, "link", "set", "eth0", "up")


@dataclass
class Command:
    typed: str  # as the document has it
    ran: str  # after the stated substitutions
    status: int
    output: str


@dataclass
class BlockRun:
    planned: int  # the commands the block runs (its login and export lines are not run)
    commands: list[Command] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(c.output for c in self.commands)

    def shown(self) -> str:
        return "\n".join(f"$ {c.ran}\n{c.output}[exit {c.status}]" for c in self.commands)


class DocSession:
    """One document's platform blocks, run in order in one scratch directory, as one user."""

    def __init__(self, landscape: Landscape, scratch: Path) -> None:
        self.scratch = scratch
        self.api = landscape.api_url
        alice = landscape.cf_home(*developer_tokens(landscape))
        bob = landscape.bosh_env(*landscape.uaa.issue_pair(
            BOB, client_id="bosh_cli", scopes=["openid", "bosh.admin"]))
        (scratch / ".home").mkdir()
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("VIRTUAL_ENV", "PYTHONPATH", "BOSH_DEPLOYMENT")}
        self.env.update(
            CF_HOME=alice["CF_HOME"], BOSH_CONFIG=bob["BOSH_CONFIG"], BOSH_ENVIRONMENT="lab",
            PCAPD_API=self.api, HOME=str(scratch / ".home"), COLUMNS="200", LC_ALL="C.UTF-8",
            PATH=f"{ROOT / '.venv' / 'bin'}:{self.env.get('PATH', '/usr/bin:/bin')}")
        self.last_id: str | None = None
        self.runs: dict[int, BlockRun] = {}

    def substituted(self, command: str) -> str:
        for url in API_URLS:
            command = command.replace(url, self.api)
        command = command.replace(*WIRESHARK)
        if self.last_id is not None:
            command = command.replace(FULL_ID, self.last_id)
            words = shlex.split(command, comments=True)
            for placeholder in ("ID", *PREFIXES):
                if placeholder in words:
                    real = self.last_id if placeholder == "ID" else self.last_id[:4]
                    command = re.sub(rf"(?<=\s){placeholder}(?=\s|$)", real, command)
        return command

    def run(self, block: Block) -> BlockRun:
        planned = [c for c in commands(block.text) if not LOGIN.match(c)]  # (see above)
        done = BlockRun(sum(1 for c in planned if not EXPORT.fullmatch(c)))
        for typed in planned:
            command = self.substituted(typed)
            export = EXPORT.fullmatch(command)
            if export:
                self.env[export.group(1)] = export.group(2)
                continue
            try:
                result = subprocess.run(["bash", "-o", "pipefail", "-c", command],
                                        cwd=self.scratch, env=self.env,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, timeout=block.timeout,
                                        check=False)
                status, output = result.returncode, result.stdout.decode("utf-8", "replace")
            except subprocess.TimeoutExpired as exc:
                status = -1
                output = (exc.stdout or b"").decode("utf-8", "replace") + "[timed out]\n"
            done.commands.append(Command(typed, command, status, output))
            if status != 0:
                break
            if "--upload" in command or "record start" in command:
                found = NEW_ID.search(output)
                if found:
                    self.last_id = found.group(0)
        self.runs[block.line] = done
        with (self.scratch / ".transcript").open("a", encoding="utf-8") as transcript:
            transcript.write(f"--- {block.where}\n{done.shown()}\n")  # to read after a failure
        return done


class DocSessions:
    def __init__(self, landscape: Landscape, factory: pytest.TempPathFactory) -> None:
        self.landscape = landscape
        self.factory = factory
        self.sessions: dict[Path, DocSession] = {}

    def through(self, block: Block) -> tuple[DocSession, BlockRun]:
        """Run the document's platform blocks up to ``block`` (once each); its run."""
        if block.doc not in self.sessions:
            self.sessions[block.doc] = DocSession(self.landscape,
                                                  self.factory.mktemp(block.doc.stem))
        session = self.sessions[block.doc]
        for earlier in (b for b in fenced_blocks(block.doc) if b.marker == "platform"):
            if earlier.line not in session.runs:
                session.run(earlier)
            if earlier.line == block.line:
                return session, session.runs[block.line]
        raise AssertionError(f"{block.where} is not a platform block")


@pytest.fixture(scope="module")
def sessions(landscape: Landscape, tmp_path_factory: pytest.TempPathFactory) -> DocSessions:
    return DocSessions(landscape, tmp_path_factory)


# -- what the documents say the named blocks produce ----------------------------------------


def interfaces(path: Path) -> str:
    return run_tool("capinfos", path)


def _checklist_incident(session: DocSession, run: BlockRun) -> None:
    """Section 1: every web instance of my-app on eth0, the connecting line first, the summary
    naming its sources last."""
    assert run.output.splitlines()[0].startswith(
        f"connecting to {session.api} (from PCAPD_API) as alice, org/dev"), run.output
    assert "limits: 2s (the api's maximum; you asked 5m)" in run.output
    assert "written to incident.pcapng from 3 sources (" in run.output.strip().splitlines()[-1]
    info = interfaces(session.scratch / "incident.pcapng")
    for index in range(3):
        assert f"my-app/{index}:eth0" in info, info


def _checklist_live(session: DocSession, run: BlockRun) -> None:
    """Section 2: the pipe reaches the reader (tshark here, Wireshark on a laptop)."""
    assert "Capturing on '-'" in run.output, run.output
    assert "packets written to stdout from 3 sources" in run.output, run.output


def _checklist_routers(session: DocSession, run: BlockRun) -> None:
    """Section 3: every router VM of deployment cf."""
    assert "as bob, bosh environment lab (" in run.output.splitlines()[0], run.output
    info = interfaces(session.scratch / "routers.pcapng")
    for router in ROUTERS:
        assert f"router/{router}:eth0" in info, info


def _checklist_merge(session: DocSession, run: BlockRun) -> None:
    """Section 4: one file with both sides' interfaces."""
    assert "from 2 files (5 interfaces) into incident-both.pcapng" in run.output, run.output
    info = interfaces(session.scratch / "incident-both.pcapng")
    assert "my-app/0:eth0" in info and f"router/{ROUTERS[0]}:eth0" in info, info


def _checklist_upload(session: DocSession, run: BlockRun) -> None:
    """Section 5 and its prose: the id is printed; ``captures list`` shows it; ``captures
    download ID -w incident-upload.pcapng`` fetches a pcapng of the same sources."""
    assert session.last_id is not None and f"stored capture {session.last_id}" in run.output, \
        run.output
    listed = session.run(_prose("pcapd captures list"))
    assert session.last_id[:8] in listed.output, listed.shown()
    fetched = session.run(_prose("pcapd captures download ID -w incident-upload.pcapng"))
    assert [c.status for c in fetched.commands] == [0], fetched.shown()
    info = interfaces(session.scratch / "incident-upload.pcapng")
    assert "my-app/2:eth0" in info, info


def _prose(command: str) -> Block:
    """A command the checklist's text tells the reader to type, as a block of its own."""
    return Block(ROOT / "docs" / "3am-checklist.md", -len(command), "sh", command + "\n")


CHECKS: dict[str, Callable[[DocSession, BlockRun], None]] = {
    "incident": _checklist_incident, "live": _checklist_live, "routers": _checklist_routers,
    "merge": _checklist_merge, "upload": _checklist_upload,
}


def _written(command: str) -> list[str]:
    """The files a command's ``pcapd … -w FILE`` parts write (not ``-``)."""
    files = []
    for words in simple_commands(command):
        if Path(words[0]).name == "pcapd" and "-w" in words[:-1]:
            target = words[words.index("-w") + 1]
            if target != "-":
                files.append(target)
    return files


def _block_id(block: Block) -> str:
    name = block.options.get("name")
    return f"{block.doc.relative_to(ROOT)}:{block.line}" + (f":{name}" if name else "")


@pytest.mark.parametrize("block", platform_blocks(), ids=_block_id)
def test_platform_block_runs(block: Block, sessions: DocSessions) -> None:
    session, run = sessions.through(block)
    shown = f"--- {block.where} ---\n{block.text}--- as run ---\n{run.shown()}"
    assert run.commands, f"{block.where}: nothing ran\n{shown}"
    statuses = [c.status for c in run.commands]
    expected = [0] * (run.planned - 1) + [block.exit_status]
    assert statuses == expected, \
        f"exit statuses {statuses}, expected 0 each (the last {block.exit_status})\n{shown}"
    for command in run.commands:
        for name in _written(command.ran):
            interfaces(session.scratch / name)  # a pcapng capinfos reads without a warning
    assert "Traceback" not in run.output, shown
    if block.output is not None:
        missing = missing_output(block.output.text, run.output)
        assert missing is None, f"{block.output.where}: not in the output: {missing!r}\n{shown}"
    check = CHECKS.get(block.options.get("name", ""))
    if check is not None:
        check(session, run)


def test_every_named_check_has_its_block() -> None:
    """A check whose block lost its ``name=`` would silently stop checking."""
    named = {b.options.get("name") for b in platform_blocks()}
    assert set(CHECKS) <= named, f"no platform block named {sorted(set(CHECKS) - named)}"


def test_substitutions() -> None:
    """The stated substitutions, on the guides' own spellings."""
    session = DocSession.__new__(DocSession)
    session.api, session.last_id = "http://127.0.0.1:1", "0123456789abcdef0123456789abcdef"
    assert session.substituted("pcapd captures download ID -w x.pcapng") == \
        "pcapd captures download 0123456789abcdef0123456789abcdef -w x.pcapng"
    assert session.substituted("pcapd record save 3f2a --last 5m") == \
        "pcapd record save 0123 --last 5m"
    assert session.substituted(f"pcapd captures download {FULL_ID} -w b") == \
        "pcapd captures download 0123456789abcdef0123456789abcdef -w b"
    assert session.substituted("pcapd capture cf my-app -w - | wireshark -k -i -") == \
        "pcapd capture cf my-app -w - | tshark -i -"
    assert session.substituted("pcapd captures list --api https://pcap.sys.example.com") == \
        "pcapd captures list --api http://127.0.0.1:1"
    assert session.substituted("pcapd capture cf my-app -i lo tcp port 8080") == \
        "pcapd capture cf my-app -i lo tcp port 8080"
    assert LOGIN.match("cf login -a https://api.sys.example.com && cf target -o o -s s")
    assert LOGIN.match("bosh -e lab log-in") and not LOGIN.match("pcapd capture bosh -e lab")
    assert commands("a \\\n  b\n# c\n\nd\n") == ["a    b", "d"]
