"""The ``pcapd`` command as a user runs it: the console script in .venv, exit codes, stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pcapd import __version__

ROOT = Path(__file__).resolve().parents[1]
JOB_CERTS = {"agent": "/var/vcap/jobs/pcapd-agent/config/certs",
             "api": "/var/vcap/jobs/pcapd-api/config/certs"}


def pcapd(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed console script, as a user would."""
    exe = Path(sys.executable).with_name("pcapd")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_version_names_release_and_protocol() -> None:
    result = pcapd("version")
    assert result.returncode == 0
    assert result.stdout.startswith(f"pcapd {__version__} (protocol ")


def test_captures_without_a_login_say_what_to_run(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "CF_HOME": str(tmp_path)}
    env.pop("PCAPD_API", None)
    result = subprocess.run([str(Path(sys.executable).with_name("pcapd")), "captures", "list"],
                            capture_output=True, text=True, timeout=60, check=False, env=env)
    assert result.returncode in (1, 2)
    assert "cf login" in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""


def test_upload_of_a_local_capture_is_refused_with_the_alternative() -> None:
    result = pcapd("capture", "local", "--upload")
    assert result.returncode == 2
    assert "-w FILE" in result.stderr


def test_unknown_flag_is_a_usage_error() -> None:
    result = pcapd("capture", "local", "--no-such-flag")
    assert result.returncode == 2
    assert "--no-such-flag" in result.stderr


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki") / "certs"
    result = pcapd("certs", "init", str(directory), "--agent-host", "198.18.0.1")
    assert result.returncode == 0, result.stderr
    return directory


def render_example(role: str, certs: Path, tmp_path: Path) -> Path:
    """The example config of ``role`` with its certificate paths pointing at ``certs``."""
    name = "agent.yml" if role == "agent" else "api.yml"
    text = (ROOT / "config" / name).read_text().replace(JOB_CERTS[role], str(certs))
    path = tmp_path / name
    path.write_text(text)
    return path


def test_certs_init_writes_private_keys_0600(certs: Path) -> None:
    for key in ("ca.key", "agent.key", "api-client.key", "api.key"):
        assert (certs / key).stat().st_mode & 0o777 == 0o600
    assert pcapd("certs", "init", str(certs)).returncode == 2  # refuses to overwrite


@pytest.mark.parametrize("role", ["agent", "api"])
def test_example_config_passes_check(role: str, certs: Path, tmp_path: Path) -> None:
    result = pcapd(role, "--config", str(render_example(role, certs, tmp_path)), "--check")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_names_every_key_at_fault(certs: Path, tmp_path: Path) -> None:
    path = render_example("agent", certs, tmp_path)
    text = path.read_text()
    text = text.replace("upper_limit: 950", "upper_limit: 5000")
    text += "\nbogus_key: 1\n"
    path.write_text(text)
    result = pcapd("agent", "--config", str(path), "--check")
    assert result.returncode == 1
    assert "buffer.upper_limit" in result.stderr
    assert "bogus_key" in result.stderr


def test_missing_config_file_is_one_clear_line(tmp_path: Path) -> None:
    result = pcapd("api", "--config", str(tmp_path / "nope.yml"), "--check")
    assert result.returncode == 1
    assert "nope.yml" in result.stderr
    assert "Traceback" not in result.stderr
