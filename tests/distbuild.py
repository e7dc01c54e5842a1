"""The locks (requirements/*.txt), the wheels dev/setup downloaded from them, and pcapd built
from this checkout: what the packaging, client-install and release tests share.

Nothing here reaches an index: pcapd is built with ``--no-isolation`` from the locked
setuptools of this venv, and venvs are filled with ``--no-index`` from ``.venv/wheels``
(dev/setup keeps every wheel of requirements/dev.txt there, hash-checked). A wheelhouse that
lacks a pin (a venv set up before the lock) is completed with ``pip download`` once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "requirements"
WHEELHOUSE = Path(sys.prefix) / "wheels"
SERVER_ONLY = ("cypcap", "pyroute2", "minio", "prometheus_client", "cryptography")
"""Import names the laptop client must neither need nor have."""

# A pip that only sees what we give it: no index, no host configuration.
QUIET_PIP_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {
    "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INDEX": "1"}


@dataclass(frozen=True)
class Pin:
    """One locked distribution: ``name==version ; marker`` with its allowed sha256 digests."""

    name: str  # canonical
    version: str
    marker: str
    hashes: frozenset[str]

    def applies(self) -> bool:
        """Whether this pin is installed here (CPython 3.11 on Linux x86_64 in CI)."""
        return not self.marker or Marker(self.marker).evaluate()


def read_lock(path: Path) -> dict[str, Pin]:
    """The pins of a requirements file written by dev/lock (uv's hash-pinned format)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pins = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *options = line.split(" --hash=")
        spec, _, marker = requirement.partition(";")
        name, _, version = spec.strip().partition("==")
        assert version, f"{path.name}: not an exact pin: {line!r}"
        hashes = frozenset(o.strip().removeprefix("sha256:") for o in options)
        assert hashes, f"{path.name}: {name} has no hash"
        pins[canonicalize_name(name)] = Pin(canonicalize_name(name), version, marker.strip(),
                                            hashes)
    return pins


def wheel_pin(wheel: Path) -> tuple[str, str]:
    """(canonical name, version) of a wheel file."""
    name, version, _, _ = parse_wheel_filename(wheel.name)
    return canonicalize_name(name), str(version)


def wheelhouse() -> Path:
    """dev/setup's wheels, completed from the index (hash-checked) if a pin is missing."""
    have = {wheel_pin(w) for w in WHEELHOUSE.glob("*.whl")}
    wanted = {(p.name, p.version) for p in read_lock(LOCKS / "dev.txt").values() if p.applies()}
    if not wanted <= have:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--require-hashes",
                        "--no-deps", "--only-binary=:all:", "-r", str(LOCKS / "dev.txt"),
                        "-d", str(WHEELHOUSE)], check=True, timeout=600)
    return WHEELHOUSE


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path


def build_pcapd(out: Path) -> Dists:
    """``python -m build``: pcapd's sdist, and its wheel built from that sdist — the pure
    ``py3-none-any`` wheel a laptop installs (``PCAPD_NO_EXTENSIONS=1``: the compiled core is
    built where pcapd is installed from the sdist, as the BOSH package does)."""
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                    str(REPO)], check=True, timeout=300, capture_output=True,
                   env=os.environ | {"PCAPD_NO_EXTENSIONS": "1"})
    (sdist,) = out.glob("pcapd-*.tar.gz")
    (wheel,) = out.glob("pcapd-*.whl")
    return Dists(sdist, wheel)


def client_venv(where: Path, pcapd_wheel: Path) -> Path:
    """A laptop-style install: a venv with requirements/client.txt and pcapd's wheel alone.
    Returns its ``bin`` directory."""
    venv.create(where, with_pip=True)
    python = str(where / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "--require-hashes",
                    "--only-binary=:all:", "--find-links", str(wheelhouse()),
                    "-r", str(LOCKS / "client.txt")],
                   check=True, timeout=300, env=QUIET_PIP_ENV)
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(pcapd_wheel)],
                   check=True, timeout=300, env=QUIET_PIP_ENV)
    return where / "bin"


def install_locked(python: Path, *names: str) -> None:
    """Install ``names`` (test tools) into the venv of ``python`` at the lock's versions: every
    pin of requirements/dev.txt as a constraint, the files from the hash-checked wheelhouse."""
    constraints = python.parent.parent / "lock-constraints.txt"
    constraints.write_text("".join(f"{p.name}=={p.version}\n"
                                   for p in read_lock(LOCKS / "dev.txt").values() if p.applies()))
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--only-binary=:all:",
                    "--find-links", str(wheelhouse()), "-c", str(constraints), *names],
                   check=True, timeout=300, env=QUIET_PIP_ENV)


def importable(python: Path, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` the venv of ``python`` can import."""
    found = subprocess.run(
        [str(python), "-c", "import importlib.util, sys; "
         f"print(*[m for m in {modules!r} if importlib.util.find_spec(m)])"],
        capture_output=True, text=True, check=True, timeout=60)
    return found.stdout.split()
