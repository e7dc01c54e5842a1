"""``python -m build``: an sdist and a wheel whose metadata is right — the README renders on
PyPI (``twine check --strict``), the laptop client's dependencies are the only unconditional
ones, the server roles' come with the ``server`` extra, and the ``pcapd`` entry point runs."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path

import pytest

import pcapd
from tests.distbuild import Dists, build_pcapd


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    return build_pcapd(tmp_path_factory.mktemp("dist"))


def wheel_file(dists: Dists, name: str) -> str:
    with zipfile.ZipFile(dists.wheel) as wheel:
        return wheel.read(f"pcapd-{pcapd.__version__}.dist-info/{name}").decode()


def metadata(dists: Dists) -> Message:
    return HeaderParser().parsestr(wheel_file(dists, "METADATA"))


def test_build_makes_one_sdist_and_one_pure_wheel(dists: Dists) -> None:
    assert dists.sdist.name == f"pcapd-{pcapd.__version__}.tar.gz"
    assert dists.wheel.name == f"pcapd-{pcapd.__version__}-py3-none-any.whl"
    with tarfile.open(dists.sdist) as sdist:
        names = set(sdist.getnames())
    root = f"pcapd-{pcapd.__version__}"
    for needed in ("README.md", "setup.cfg", "setup.py", "pyproject.toml", "pcapd/cli.py",
                   "pcapd/proto/codec.py", "pcapd/_ext/capture.c", "pcapd/_ext/pcapngwalk.c"):
        assert f"{root}/{needed}" in names, needed
    with zipfile.ZipFile(dists.wheel) as wheel:
        shipped = wheel.namelist()
    assert "pcapd/cli.py" in shipped
    assert not [name for name in shipped if name.endswith((".c", ".h"))], shipped


def test_twine_finds_the_metadata_and_readme_valid(dists: Dists) -> None:
    done = subprocess.run([sys.executable, "-m", "twine", "check", "--strict",
                           str(dists.sdist), str(dists.wheel)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2, done.stdout


def test_the_wheel_metadata(dists: Dists) -> None:
    meta = metadata(dists)
    assert (meta["Name"], meta["Version"]) == ("pcapd", pcapd.__version__)
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().startswith("# pcapd")  # the README is the long description
    requires = meta.get_all("Requires-Dist") or []
    unconditional = [r for r in requires if ";" not in r]
    server = [r for r in requires if 'extra == "server"' in r]
    for name in ("cypcap", "pyroute2", "minio", "prometheus-client", "cryptography"):
        assert not any(r.lower().startswith(name) for r in unconditional), name
        assert any(r.lower().startswith(name) for r in server), name
    for name in ("trio", "msgspec", "httpx", "rich"):
        assert any(r.lower().startswith(name) for r in unconditional), name
    assert "server" in (meta.get_all("Provides-Extra") or [])


def test_the_entry_point_is_the_cli(dists: Dists) -> None:
    entry_points = wheel_file(dists, "entry_points.txt")
    assert "[console_scripts]\npcapd = pcapd.cli:main" in entry_points
    done = subprocess.run([str(Path(sys.executable).with_name("pcapd")), "--version"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.startswith(f"pcapd {pcapd.__version__} (protocol ")
