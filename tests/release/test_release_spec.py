"""The BOSH release's static parts: job specs cover the config model, files hang together,
shell scripts parse (and pass shellcheck where it is installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from pcapd.config import AgentConfig, ApiConfig
from tests.release.release_tools import JOBS, RELEASE, config_keys

MODELS = {"pcapd-agent": ("pcapd.agent.", AgentConfig), "pcapd-api": ("pcapd.api.", ApiConfig)}

# Spec defaults that differ from the model's, on purpose.
BOSH_DEFAULTS = {
    # the model has no default for these: on a BOSH VM the job knows where they belong
    "pcapd.agent.containers.netns_dir": "/var/vcap/data/garden-cni/container-netns",
    "pcapd.agent.containers.metadata_store": "/var/vcap/data/container-metadata/store.json",
    "pcapd.api.storage.kind": "local",
    "pcapd.api.storage.path": "/var/vcap/store/pcapd-api",
}
# Properties that are no config key: how BOSH runs the job.
BOSH_ONLY = {"pcapd.agent.bpm.privileged"}


def job_spec(job: str) -> dict[str, Any]:
    spec = yaml.safe_load((JOBS / job / "spec").read_text())
    assert isinstance(spec, dict)
    return spec


@pytest.mark.parametrize("job", sorted(MODELS))
def test_every_config_key_is_a_property_with_the_models_default(job: str) -> None:
    prefix, model = MODELS[job]
    properties = job_spec(job)["properties"]
    for key, default in config_keys(model).items():
        name = prefix + key
        assert name in properties, f"{job}/spec lacks {name} (config key {key})"
        definition = properties[name] or {}
        assert definition.get("description"), f"{name} has no description"
        if name in BOSH_DEFAULTS:
            assert definition.get("default") == BOSH_DEFAULTS[name], name
        elif default is msgspec.NODEFAULT or default is None:
            assert "default" not in definition, f"{name}: the config has no default"
        else:
            assert "default" in definition, f"{name} lacks the default {default!r}"
            assert definition["default"] == default, f"{name}: default differs from the model"
            assert type(definition["default"]) in (type(default), int), name


@pytest.mark.parametrize("job", sorted(MODELS))
def test_every_property_is_a_config_key_or_documented(job: str) -> None:
    prefix, model = MODELS[job]
    keys = {prefix + key for key in config_keys(model)}
    for name, definition in job_spec(job)["properties"].items():
        assert name in keys or name in BOSH_ONLY, f"{name} is neither a config key nor BOSH's"
        assert (definition or {}).get("description"), f"{name} has no description"


@pytest.mark.parametrize("job", sorted(MODELS))
def test_templates_listed_and_present(job: str) -> None:
    spec = job_spec(job)
    assert spec["name"] == job
    listed = set(spec["templates"])
    present = {p.name for p in (JOBS / job / "templates").iterdir()}
    assert listed == present
    destinations = set(spec["templates"].values())
    assert {"bin/drain", "config/bpm.yml"} <= destinations
    assert (JOBS / job / "monit").is_file()
    # the pcapd package, and the Python it was installed with (vendored, see packages/pcapd)
    assert spec["packages"] == ["pcapd", "python-3.11"]


def test_package_spec_matches_the_packaging_script_and_wheel_layout() -> None:
    spec = yaml.safe_load((RELEASE / "packages/pcapd/spec").read_text())
    assert spec["name"] == "pcapd"
    assert spec["dependencies"] == ["python-3.11", "libpcap"]
    # blobs added as pcapd/NAME by build-wheels: the dependencies' wheels, pcapd's sdist, the lock
    # (test_release_package checks that every file build-wheels makes matches these)
    assert spec["files"] == ["pcapd/*.whl", "pcapd/pcapd-*.tar.gz", "pcapd/requirements.txt"]
    packaging = (RELEASE / "packages/pcapd/packaging").read_text()
    assert "/var/vcap/packages/python-3.11/bin/python3" in packaging
    assert "--no-index" in packaging and "--require-hashes" in packaging
    assert 'bosh add-blob "$file" "pcapd/' in (RELEASE / "scripts/build-wheels").read_text()
    # the compiled core is built against the libpcap package, and must build
    assert "PCAPD_REQUIRE_EXTENSIONS=1" in packaging and "--require-compiled" in packaging


def test_libpcap_package_is_built_from_the_pinned_source_blob() -> None:
    spec = yaml.safe_load((RELEASE / "packages/libpcap/spec").read_text())
    assert spec["name"] == "libpcap" and spec["dependencies"] == []
    assert spec["files"] == ["libpcap/libpcap-*.tar.xz"]
    fetch = (RELEASE / "scripts/fetch-libpcap").read_text()
    assert 'bosh add-blob "$file" "libpcap/$NAME"' in fetch
    assert "SHA256=" in fetch and 'NAME=libpcap-$VERSION.tar.xz' in fetch


def test_release_metadata() -> None:
    final = yaml.safe_load((RELEASE / "config/final.yml").read_text())
    assert final["name"] == "pcapd"
    assert final["blobstore"]["provider"] == "local"
    assert yaml.safe_load((RELEASE / "config/blobs.yml").read_text()) == {}


SCRIPTS = [RELEASE / "packages/pcapd/packaging", RELEASE / "packages/libpcap/packaging",
           RELEASE / "scripts/build-wheels", RELEASE / "scripts/fetch-libpcap"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(RELEASE)))
def test_shell_scripts(script: Path) -> None:
    assert script.stat().st_mode & 0o111, f"{script} is not executable"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    if shutil.which("shellcheck"):
        done = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stdout
