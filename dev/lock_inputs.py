"""Print a digest of what the locks are made from: setup.cfg's dependencies and extras, and
requirements/build.in. dev/lock stores it in requirements/inputs.sha256; dev/setup compares, so a
dependency added to setup.cfg without a new lock stops the setup with what to run."""

from __future__ import annotations

import configparser
import hashlib
from pathlib import Path

root = Path(__file__).resolve().parent.parent
cfg = configparser.ConfigParser(interpolation=None)
cfg.read(root / "setup.cfg")
parts = ["install_requires=" + cfg.get("options", "install_requires", fallback="")]
if cfg.has_section("options.extras_require"):
    parts += [f"{k}={v}" for k, v in sorted(cfg.items("options.extras_require"))]
parts.append((root / "requirements/build.in").read_text())
print(hashlib.sha256("\n".join(parts).encode()).hexdigest())
