"""Tests mirror the code: ``pcapd/<package>/<module>.py`` is tested in
``tests/<package>/test_<module>.py`` (mitmproxy's ``test/filename_matching.py``, as a test).

The rules, checked here:

- A module *has logic* when it defines a function or a class; a module of constants and
  re-exports has nothing of its own to test. A package's ``__init__.py`` is tested in
  ``tests/<package>/test_<package>.py``; a private module ``_name.py`` in ``test_name.py``.
- A test file is named for the module it mainly tests: ``test_<module>.py``, or
  ``test_<module>_<aspect>.py`` for a second file about one side of it (``_properties``,
  ``_fuzz``, ``_tools``, …). Every ``test_*.py`` outside ``FLOWS`` and ``CROSS_CUTTING`` must
  name a module next to its mirrored place.
- Every module with logic has a test file, or is in ``TESTED_THROUGH`` with the file that tests
  it and why it has none of its own. Both lists fail when an entry goes stale.

Helpers (``netns.py``, ``conftest.py``, ``fakes/``, …) are any file not named ``test_*.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Directories of tests that test a whole flow (processes, packaging), not one module.
FLOWS = {
    "e2e": "the roles as separate processes, end to end (root: namespaces, libpcap)",
    "release": "the BOSH release, the wheels and the lock",
    "roles": "the systemd units and monit, as the roles are installed",
    "docs": "the documents against the code they describe",
}

# Test files that are about no single module, each with the reason.
CROSS_CUTTING = {
    "test_filenames.py": "this check: the layout of tests/",
    "test_fakes.py": "the tests' fakes of UAA, the Cloud Controller and BOSH against the reference",
    "test_peer_input_fuzz.py": "every file a peer or user controls (configs, cf and bosh CLI "
                               "files) fuzzed through its parser",
    "client/test_record_arguments.py": "`pcapd record`'s command line: cli.py's parser and "
                                       "client/arguments.py's flags for the flight recorder",
}

# Modules with logic and no test file of their own: the file that tests them, and why.
TESTED_THROUGH = {
    "agent/capture.py": "one capture on an agent: tasks over a live libpcap engine and the "
                        "api's link, nothing pure to test apart; tests/agent/test_server.py "
                        "and tests/e2e/test_agents.py (root: namespaces)",
    "agent/main.py": "starts the agent role (config, signals, serve): only a process shows "
                     "it; tests/e2e/test_agents.py",
    "api/main.py": "starts the api role (config, signals, serve): only a process shows it; "
                   "tests/e2e/test_api_role.py",
    "client/capture.py": "one capture from the CLI: the link to an api, signals, progress "
                         "and the file together; tests/client/test_remote.py (a stand-in api) "
                         "and tests/e2e/test_capture_local.py",
    "client/extcap/answer.py": "Wireshark's exchange (stdout, stderr held back, the FIFO): "
                               "tests/client/extcap/test_protocol.py runs it as Wireshark and "
                               "tshark do",
    "client/record.py": "`pcapd record` against the real api and agents (its table and "
                        "flags: test_recordings.py, test_record_arguments.py); "
                        "tests/e2e/test_record.py",
    "api/recordings.py": "`pcapd record`'s endpoints: each request drives agents' rings and "
                         "the store together (its policy: test_recording_policy.py); "
                         "tests/e2e/test_record.py",
    "api/trigger_watch.py": "triggers fired on agents saved by the api, also after a restart: "
                            "needs agents with rings; tests/e2e/test_record.py",
}


def has_logic(path: Path) -> bool:
    """A function or a class anywhere in the module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return any(isinstance(node, kinds) for node in ast.walk(tree))


def modules(source: Path) -> dict[str, Path]:
    """Each module of the source tree by the name its test file carries, keyed by
    ``"<package dir>/<name>"`` (``"agent/pcap"``, ``"config/config"``, ``"/cli"``)."""
    found: dict[str, Path] = {}
    for path in sorted(source.rglob("*.py")):
        parts = path.relative_to(source).parts
        if parts[-1] == "__init__.py":
            if len(parts) == 1:
                continue  # pcapd/__init__.py: the version
            found[f"{'/'.join(parts[:-1])}/{parts[-2]}"] = path
        else:
            found[f"{'/'.join(parts[:-1])}/{parts[-1][:-3].lstrip('_')}"] = path
    return found


def module_of(test: Path, tests: Path, names: set[str]) -> str | None:
    """The module a test file is named for: ``test_<module>.py`` exactly, else the longest
    ``<module>`` such that the file is ``test_<module>_<aspect>.py``."""
    folder = "/".join(test.relative_to(tests).parts[:-1])
    stem = test.stem.removeprefix("test_")
    if f"{folder}/{stem}" in names:
        return f"{folder}/{stem}"
    prefixes = [n for n in names if n.rpartition("/")[0] == folder
                and stem.startswith(n.rpartition("/")[2] + "_")]
    return max(prefixes, key=len) if prefixes else None


def problems(source: Path, tests: Path, flows: dict[str, str], cross: dict[str, str],
             through: dict[str, str]) -> list[str]:
    """Everything out of place, one sentence each: what is wrong and what to do."""
    found = modules(source)
    names = set(found)
    covered: set[str] = set()
    wrong: list[str] = []
    for test in sorted(tests.rglob("test_*.py")):
        rel = test.relative_to(tests).as_posix()
        if rel.split("/")[0] in flows or rel in cross:
            continue
        module = module_of(test, tests, names)
        if module is None:
            wrong.append(
                f"tests/{rel} names no module of pcapd/: name it for the module it mainly "
                f"tests (tests/<package>/test_<module>.py, or test_<module>_<aspect>.py) "
                f"and move it there, or add it to CROSS_CUTTING in tests/test_filenames.py "
                f"with the reason")
        else:
            covered.add(module)
    for name, path in sorted(found.items()):
        rel = path.relative_to(source).as_posix()
        if name in covered or not has_logic(path):
            if rel in through:
                wrong.append(f"pcapd/{rel} is in TESTED_THROUGH but has a test file of its own "
                             f"(or no logic): remove it from the list")
            continue
        if rel not in through:
            folder, _, stem = name.rpartition("/")
            wrong.append(
                f"pcapd/{rel} has logic but no tests/{folder + '/' if folder else ''}"
                f"test_{stem}.py: add one (small tests of what a user sees of it), or add "
                f"it to TESTED_THROUGH in tests/test_filenames.py with the file that tests it")
    wrong += [f"TESTED_THROUGH names pcapd/{rel}, which does not exist: remove it"
              for rel in through if not (source / rel).exists()]
    wrong += [f"CROSS_CUTTING names tests/{rel}, which does not exist: remove it"
              for rel in cross if not (tests / rel).exists()]
    wrong += [f"FLOWS names tests/{d}/, which does not exist: remove it"
              for d in flows if not (tests / d).is_dir()]
    return wrong


def test_every_module_with_logic_has_its_test_file_at_the_mirrored_place() -> None:
    wrong = problems(ROOT / "pcapd", ROOT / "tests", FLOWS, CROSS_CUTTING, TESTED_THROUGH)
    assert not wrong, "\n".join(["", *wrong])


def _tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_a_misplaced_test_file_and_an_untested_module_are_named_with_the_fix(
        tmp_path: Path) -> None:
    source, tests = tmp_path / "pcapd", tmp_path / "tests"
    _tree(source, {"__init__.py": "", "cli.py": "def main(): ...\n",
                   "agent/__init__.py": "", "agent/pcap.py": "class Handle: ...\n",
                   "agent/consts.py": "SNAPLEN = 262144\n",
                   "agent/_compat.py": "def patch(): ...\n"})
    _tree(tests, {"test_cli_failures.py": "", "agent/test_compat.py": "",
                  "agent/netns.py": "", "e2e/test_anything.py": "",
                  "test_pcap.py": ""})  # agent/pcap.py's tests, one level too high
    assert problems(source, tests, {"e2e": ""}, {}, {}) == [
        "tests/test_pcap.py names no module of pcapd/: name it for the module it mainly tests "
        "(tests/<package>/test_<module>.py, or test_<module>_<aspect>.py) and move it there, "
        "or add it to CROSS_CUTTING in tests/test_filenames.py with the reason",
        "pcapd/agent/pcap.py has logic but no tests/agent/test_pcap.py: add one (small tests "
        "of what a user sees of it), or add it to TESTED_THROUGH in tests/test_filenames.py "
        "with the file that tests it",
    ]
    (tests / "test_pcap.py").rename(tests / "agent" / "test_pcap.py")
    assert problems(source, tests, {"e2e": ""}, {}, {}) == []
    assert problems(source, tests, {"e2e": ""}, {}, {"agent/pcap.py": "", "gone.py": ""}) == [
        "pcapd/agent/pcap.py is in TESTED_THROUGH but has a test file of its own (or no logic): "
        "remove it from the list",
        "TESTED_THROUGH names pcapd/gone.py, which does not exist: remove it",
    ]
