"""docs/architecture.md's file map against the code: what it calls pure imports without Trio.

The map's "pure" section is the promise that the protocol and data logic can be read, tested
and reused without an event loop. Each module it names there is imported in a fresh interpreter
with ``sys.modules["trio"] = None``, so any import of Trio, direct or through another module,
fails the test (asserting afterwards that ``trio`` is absent from ``sys.modules`` would miss an
import that a module catches, and runs after everything else the test process loaded).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAP = ROOT / "docs" / "architecture.md"


def pure_section(text: str) -> str:
    """The lines of the file map between the ``── pure ──`` and the next ``── … ──`` rule."""
    start = text.index("── pure ──")
    start = text.index("\n", start) + 1
    end = text.index("── ", start)
    return text[start:text.rindex("\n", 0, end)]


def pure_modules(text: str) -> list[str]:
    """The dotted names of the modules the pure section lists: an entry starts at two spaces
    with its package (``proto/``) or file (``flow.py``, ``merge/core.py``), and every
    ``name.py`` on its lines is in that package."""
    found: list[str] = []
    package = ""
    for line in pure_section(text).splitlines():
        entry = re.match(r"  (\S+)", line)
        rest = line
        if entry:
            head = entry.group(1)
            package = head if head.endswith("/") else (head.rpartition("/")[0] + "/").lstrip("/")
            rest = line[entry.start(1):]
        for name in re.findall(r"(?<![\w/.`])([\w/]+)\.py\b", rest):
            path = name if entry and rest.startswith(name) else package + name
            found.append("pcapd." + path.replace("/", "."))
    return sorted(set(found))


def test_the_map_is_read_as_it_is_written() -> None:
    text = MAP.read_text()
    modules = pure_modules(text)
    assert {"pcapd.proto.messages", "pcapd.pcapng.rewrite", "pcapd.merge.core",
            "pcapd.api.ledger", "pcapd.flow", "pcapd.store.signing", "pcapd.agent.ring",
            "pcapd.client.extcap.protocol", "pcapd.api.recording_policy"} <= set(modules)
    assert "pcapd.merge.files" not in modules and "pcapd.cli" not in modules
    missing = [m for m in modules if not (ROOT / (m.replace(".", "/") + ".py")).is_file()]
    assert not missing, f"docs/architecture.md lists modules that do not exist: {missing}"


@pytest.mark.parametrize("module", pure_modules(MAP.read_text()))
def test_each_pure_module_imports_with_trio_blocked(module: str) -> None:
    code = f"import sys; sys.modules['trio'] = None; import {module}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=False, timeout=60)
    assert done.returncode == 0, (
        f"docs/architecture.md calls {module} pure, but it needs Trio:\n{done.stderr}")
