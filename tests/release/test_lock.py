"""The locks in requirements/ are one resolution of setup.cfg's current dependencies: every
range of setup.cfg is pinned (with hashes) where it is installed, the three files agree on
every version, and the laptop client's lock holds none of the server roles' libraries."""

from __future__ import annotations

import configparser
import subprocess
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.distbuild import LOCKS, REPO, read_lock


def setup_cfg_requirements() -> dict[str, set[str]]:
    """Canonical names of setup.cfg's requirements: "" (install_requires) and each extra."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO / "setup.cfg")
    sections = {"": cfg.get("options", "install_requires")}
    sections |= dict(cfg.items("options.extras_require"))
    return {extra: {canonicalize_name(Requirement(line).name)
                    for line in text.splitlines() if line.strip() and not line.startswith("#")}
            - {"pcapd"} for extra, text in sections.items()}


def test_the_lock_was_made_from_this_setup_cfg() -> None:
    digest = subprocess.run([sys.executable, str(REPO / "dev/lock_inputs.py")],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    assert digest == (LOCKS / "inputs.sha256").read_text(), \
        "setup.cfg's dependencies changed since requirements/ was locked: run dev/lock"


def test_each_lock_pins_what_it_installs() -> None:
    wanted = setup_cfg_requirements()
    dev, server, client = (read_lock(LOCKS / f"{name}.txt") for name in ("dev", "server", "client"))
    assert set().union(*wanted.values()) <= set(dev)
    assert wanted[""] | wanted["server"] <= set(server)
    assert wanted[""] <= set(client)
    for build in ("setuptools", "wheel", "pip"):  # --no-build-isolation: the backend is locked
        assert build in dev and build in server


def test_the_locks_agree_on_every_version() -> None:
    dev = read_lock(LOCKS / "dev.txt")
    for name in ("server", "client"):
        for pin in read_lock(LOCKS / f"{name}.txt").values():
            if pin.name in dev:
                assert pin.version == dev[pin.name].version, f"{name}.txt: {pin.name}"
                assert pin.hashes == dev[pin.name].hashes, f"{name}.txt: {pin.name}"
            else:  # only on another platform than the dev lock's (e.g. Windows' cffi)
                assert pin.marker, f"{name}.txt pins {pin.name}, which dev.txt does not"


def test_the_client_lock_has_no_server_library() -> None:
    client = read_lock(LOCKS / "client.txt")
    server_only = setup_cfg_requirements()["server"] - setup_cfg_requirements()[""]
    assert server_only, "the server extra is empty"
    assert not server_only & set(client), server_only & set(client)
    for name in ("cypcap", "pyroute2", "minio", "prometheus-client", "cryptography"):
        assert name not in client
