"""The pcapd package: scripts/build-wheels lays out its blobs from the lock
(requirements/server.txt) and this checkout, and the packaging script installs them into a
scratch BOSH_INSTALL_TARGET with no index at all, as a BOSH compilation VM would; the installed
``pcapd version`` runs. Every wheel in the package is the lock's: name, version and hash."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from distbuild import LOCKS, QUIET_PIP_ENV, read_lock, wheel_pin, wheelhouse
from release_tools import RELEASE

import pcapd


@pytest.fixture(scope="session")
def compile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compilation directory as BOSH lays it out: the package's blobs under pcapd/. The
    wheels come from dev/setup's wheelhouse instead of the index (same files: same hashes)."""
    directory = tmp_path_factory.mktemp("compile")
    env = {**QUIET_PIP_ENV, "PYTHON": sys.executable, "PIP_FIND_LINKS": str(wheelhouse())}
    subprocess.run([str(RELEASE / "scripts/build-wheels"), str(directory / "pcapd")],
                   env=env, check=True, timeout=300)
    return directory


def test_build_wheels_gives_binary_wheels_for_the_stemcell(compile_dir: Path) -> None:
    files = sorted(p.name for p in (compile_dir / "pcapd").iterdir())
    assert [f for f in files if f.startswith("pcapd-")] == [f"pcapd-{pcapd.__version__}.tar.gz"]
    wheels = [f for f in files if f.endswith(".whl")]
    for name in ("trio", "msgspec", "cryptography", "cypcap", "pyroute2", "minio", "PyYAML"):
        canonical = name.lower().replace("-", "_")
        assert any(w.lower().startswith(canonical + "-") for w in wheels), name
    assert all(w.endswith("-none-any.whl") or "manylinux" in w for w in wheels), wheels
    assert set(files) - set(wheels) == {f"pcapd-{pcapd.__version__}.tar.gz", "requirements.txt"}
    globs = yaml.safe_load((RELEASE / "packages/pcapd/spec").read_text())["files"]
    for name in files:  # each is a blob the package's spec takes in
        assert any(fnmatch.fnmatchcase(f"pcapd/{name}", glob) for glob in globs), name


def test_every_wheel_of_the_package_is_the_locks(compile_dir: Path) -> None:
    package = compile_dir / "pcapd"
    shipped = package / "requirements.txt"
    assert shipped.read_bytes() == (LOCKS / "server.txt").read_bytes()
    lock = read_lock(shipped)
    seen = set()
    for wheel in package.glob("*.whl"):
        name, version = wheel_pin(wheel)
        assert name in lock, f"{wheel.name}: not in the lock"
        assert version == lock[name].version, f"{wheel.name}: the lock pins {lock[name].version}"
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        assert digest in lock[name].hashes, f"{wheel.name}: sha256 {digest} is not the lock's"
        seen.add(name)
    assert seen == {name for name, pin in lock.items() if pin.applies()}


def test_packaging_installs_from_the_wheels_alone(compile_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "packages" / "pcapd"
    target.mkdir(parents=True)
    env = {
        **os.environ,
        "BOSH_COMPILE_TARGET": str(compile_dir),
        "BOSH_INSTALL_TARGET": str(target),
        "PYTHON": sys.executable,
        # whatever the host's pip would use must not take part
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_FIND_LINKS": str(tmp_path / "nowhere"),
    }
    done = subprocess.run(["bash", str(RELEASE / "packages/pcapd/packaging")], cwd=compile_dir,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert f"pcapd {pcapd.__version__} (protocol" in done.stdout  # its own last check

    version = subprocess.run([str(target / "bin/pcapd"), "version"], capture_output=True,
                             text=True, timeout=60, check=True, env={"PATH": "/usr/bin:/bin"},
                             cwd=tmp_path)
    assert version.stdout.startswith(f"pcapd {pcapd.__version__} ")
    where = subprocess.run(
        [str(target / "bin/python"), "-c", "import pcapd, trio; print(pcapd.__file__)"],
        capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path)
    assert where.stdout.startswith(str(target)), "pcapd must come from the package"
    frozen = subprocess.run(
        [str(target / "bin/python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path)
    installed = dict(line.lower().replace("_", "-").split("==") for line in frozen.stdout.split())
    pins = {name: pin.version for name, pin in read_lock(LOCKS / "server.txt").items()
            if pin.applies()}
    assert installed == {**pins, "pcapd": pcapd.__version__}
