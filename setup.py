"""The compiled hot loops (see docs/decisions.md, "A compiled core"); the rest is setup.cfg.

Both extensions are optional: where there is no compiler (a laptop installing the client),
the install goes on without them and pcapd uses its pure-Python twins (``pcapd._accel``).
``PCAPD_NO_EXTENSIONS=1`` at build time builds none (a pure ``py3-none-any`` wheel).
``PCAPD_REQUIRE_EXTENSIONS=1`` makes a failed compile fail the install: the BOSH release's
packaging script sets it, so a compilation VM without what the build needs stops the deploy
with the compiler's message instead of shipping the slower twins.
"""

import os

from setuptools import Extension, setup

_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-strict-aliasing"]

_OFF = os.environ.get("PCAPD_NO_EXTENSIONS", "") not in ("", "0")
_REQUIRED = os.environ.get("PCAPD_REQUIRE_EXTENSIONS", "") not in ("", "0")

setup(
    ext_modules=[] if _OFF else [
        Extension("pcapd._pcapngwalk", ["pcapd/_ext/pcapngwalk.c"], extra_compile_args=_FLAGS,
                  optional=not _REQUIRED),
        Extension("pcapd._capture", ["pcapd/_ext/capture.c"], libraries=["pcap"],
                  extra_compile_args=_FLAGS, optional=not _REQUIRED),
        Extension("pcapd._recorder", ["pcapd/_ext/recorder.c"], libraries=["pcap"],
                  extra_compile_args=_FLAGS, optional=not _REQUIRED),
    ],
)  # fmt: skip
