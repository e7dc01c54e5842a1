"""Which commands need the server extra: its members read from pcapd's own metadata (so one
added to setup.cfg is checked too), and the one line naming the command and the install to run
when one is missing. Metadata of a stand-in pcapd on ``sys.path`` plays the laptop that
installed the client alone."""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

import pytest

from pcapd.errors import PcapdError
from pcapd.extras import (
    MissingExtra,
    missing_server_requirements,
    require_server,
    server_requirements,
)

ROOT = Path(__file__).resolve().parents[1]


def installed_as(tmp_path: Path, *requires: str) -> Path:
    """A ``pcapd`` distribution's metadata with these ``Requires-Dist`` lines, found before
    the real one."""
    info = tmp_path / "site" / "pcapd-99.0.dist-info"
    info.mkdir(parents=True)
    info.joinpath("METADATA").write_text(
        "Metadata-Version: 2.1\nName: pcapd\nVersion: 99.0\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires))
    return info.parent


def test_the_server_extra_is_what_setup_cfg_lists_by_name() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    listed = [re.match(r"[A-Za-z0-9._-]+", line.strip()).group()  # type: ignore[union-attr]
              for line in setup["options.extras_require"]["server"].splitlines() if line.strip()]
    assert server_requirements() == listed
    assert "PyJWT" in listed  # the name, not PyJWT[crypto] (a client dependency too)


def test_a_development_install_has_the_extra() -> None:
    assert missing_server_requirements() == []
    require_server("agent")


def test_a_missing_member_is_named_in_one_line_with_the_install_to_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(installed_as(
        tmp_path,
        "trio>=0.25",  # the client's: not the extra's
        'pcapd-absent-dist-one>=1; extra == "server"',
        "pcapd-absent-dist-two; extra=='server'",
        'cypcap>=0.6; python_version >= "3.8" and extra == "server"',
        'pcapd-absent-test-tool; extra == "test"',
        'pcapd-absent-dev-tool; extra == "serverless"',
    )))
    assert server_requirements() == ["pcapd-absent-dist-one", "pcapd-absent-dist-two",
                                     "cypcap"]
    assert missing_server_requirements() == ["pcapd-absent-dist-one", "pcapd-absent-dist-two"]
    with pytest.raises(MissingExtra) as missing:
        require_server("api")
    assert str(missing.value) == "pcapd api needs the server extra: pip install 'pcapd[server]'"
    assert isinstance(missing.value, PcapdError)  # the CLI prints it as one line


def test_run_from_a_checkout_without_an_install_nothing_is_checked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [str(tmp_path)])
    assert server_requirements() == []
    require_server("agent")
