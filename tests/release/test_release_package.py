"""The pcapd package: scripts/build-wheels builds the wheels from this checkout, and the
packaging script installs them into a scratch BOSH_INSTALL_TARGET with no index at all, as a
BOSH compilation VM would; the installed ``pcapd version`` runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from release_tools import RELEASE

import pcapd


@pytest.fixture(scope="session")
def compile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compilation directory as BOSH lays it out: the package's blobs under pcapd/."""
    directory = tmp_path_factory.mktemp("compile")
    subprocess.run([str(RELEASE / "scripts/build-wheels"), str(directory / "pcapd")],
                   env={**os.environ, "PYTHON": sys.executable}, check=True, timeout=300)
    return directory


def test_build_wheels_gives_binary_wheels_for_the_stemcell(compile_dir: Path) -> None:
    wheels = sorted(p.name for p in (compile_dir / "pcapd").iterdir())
    own = f"pcapd-{pcapd.__version__}-py3-none-any.whl"
    assert [w for w in wheels if w.startswith("pcapd-")] == [own]
    for name in ("trio", "msgspec", "cryptography", "cypcap", "pyroute2", "minio", "PyYAML"):
        canonical = name.lower().replace("-", "_")
        assert any(w.lower().startswith(canonical + "-") for w in wheels), name
    assert all(w.endswith("-none-any.whl") or "manylinux" in w for w in wheels), wheels


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
