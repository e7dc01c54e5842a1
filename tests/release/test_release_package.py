"""The pcapd and libpcap packages: scripts/build-wheels lays out pcapd's blobs from the lock
(requirements/server.txt) and this checkout, scripts/fetch-libpcap libpcap's source, and the
packaging scripts install them into scratch BOSH_INSTALL_TARGETs with no index at all, as a BOSH
compilation VM would (libpcap first: pcapd depends on it). The installed pcapd has its compiled
core, linked with the libpcap package's static library; the agent job's pre-start says so. Every
wheel in the package is the lock's: name, version and hash."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pcapd
from tests.distbuild import LOCKS, QUIET_PIP_ENV, read_lock, wheel_pin, wheelhouse
from tests.release.release_tools import RELEASE, needs_ruby, render_job


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


def _libpcap_version() -> str:
    fetch = (RELEASE / "scripts/fetch-libpcap").read_text()
    return fetch.split("\nVERSION=", 1)[1].split("\n", 1)[0]


@pytest.fixture(scope="session")
def packages_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/var/vcap/packages of a compilation VM with the libpcap package compiled from its blob.
    The source comes from dev/setup's .venv/sources (fetched there once, hash-checked)."""
    sources = Path(sys.prefix) / "sources"
    subprocess.run([str(RELEASE / "scripts/fetch-libpcap"), str(sources)], check=True,
                   capture_output=True, timeout=300)
    compile_dir = tmp_path_factory.mktemp("compile-libpcap")
    (compile_dir / "libpcap").mkdir()
    name = f"libpcap-{_libpcap_version()}.tar.xz"
    (compile_dir / "libpcap" / name).symlink_to(sources / name)
    packages = tmp_path_factory.mktemp("packages")
    env = {"PATH": os.environ["PATH"], "BOSH_COMPILE_TARGET": str(compile_dir),
           "BOSH_INSTALL_TARGET": str(packages / "libpcap")}
    done = subprocess.run(["bash", str(RELEASE / "packages/libpcap/packaging")], cwd=compile_dir,
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr
    return packages


@pytest.fixture(scope="session")
def installed(compile_dir: Path, packages_dir: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The pcapd package, installed by its packaging script as on the compilation VM."""
    target = packages_dir / "pcapd"
    env = {
        **os.environ,
        "BOSH_COMPILE_TARGET": str(compile_dir),
        "BOSH_INSTALL_TARGET": str(target),
        "BOSH_PACKAGES_DIR": str(packages_dir),
        "PYTHON": sys.executable,
        # whatever the host's pip would use must not take part
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_FIND_LINKS": str(tmp_path_factory.mktemp("nowhere")),
        # nor a switch of the test run (CI runs the suite with the extensions off too)
        "PCAPD_NO_EXTENSIONS": "1",
    }
    done = subprocess.run(["bash", str(RELEASE / "packages/pcapd/packaging")], cwd=compile_dir,
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    return target, done


def test_packaging_installs_from_the_wheels_alone(
        installed: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    target, done = installed
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


def test_the_package_has_the_compiled_core_linked_with_the_libpcap_package(
        installed: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    target, done = installed
    assert done.returncode == 0, done.stderr
    site = next((target / "lib").glob("python3.*/site-packages/pcapd"))
    built = sorted(p.name.split(".")[0] for p in site.glob("_*.cpython-*.so"))
    assert built == ["_capture", "_pcapngwalk", "_recorder"]
    # the vendored libpcap, linked in: the .so needs no libpcap of the VM's
    for linked in ("_capture", "_recorder"):
        needed = subprocess.run(["ldd", str(next(site.glob(f"{linked}.*.so")))],
                                capture_output=True, text=True, timeout=60, check=True).stdout
        assert "libpcap" not in needed, (linked, needed)
    probe = ("from pcapd import _accel, _capture, _pcapngwalk; "
             "print(_capture.LIB_VERSION); print(_accel.complete())")
    loaded = subprocess.run([str(target / "bin/python"), "-c", probe], capture_output=True,
                            text=True, timeout=60, check=True, cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin"})
    assert loaded.stdout.split("\n")[:2] == [
        f"libpcap version {_libpcap_version()} (with TPACKET_V3)", "True"]
    version = subprocess.run([str(target / "bin/pcapd"), "version", "--require-compiled"],
                             capture_output=True, text=True, timeout=60, check=True,
                             env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert f"compiled core: capture (libpcap version {_libpcap_version()}" in version.stdout


@needs_ruby
def test_agent_pre_start_refuses_an_agent_without_its_compiled_capture(
        installed: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path,
        agent_tls: dict[str, str]) -> None:
    target, done = installed
    assert done.returncode == 0, done.stderr
    rendered = render_job("pcapd-agent", {"pcapd": {"agent": {"tls": agent_tls}}},
                          tmp_path / "job")
    script = rendered / "bin/pre-start"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    env = {"PATH": "/usr/bin:/bin", "PCAPD_PACKAGE": str(target)}
    ok = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                        env=env, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "compiled core: capture (libpcap version" in ok.stdout
    off = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                         env={**env, "PCAPD_NO_EXTENSIONS": "1"}, check=False)
    assert off.returncode == 1
    assert "the compiled core is required here" in off.stderr
