"""The compiled hot loops (see docs/decisions.md, "A compiled core"); the rest is setup.cfg.

Both extensions are optional: where there is no compiler (a laptop installing the client),
the install goes on without them and pcapd uses its pure-Python twins (``pcapd._accel``).
``PCAPD_NO_EXTENSIONS=1`` at build time builds none (a pure ``py3-none-any`` wheel, as the
BOSH release's wheel build still wants until its package compiles them on the compilation VM).
"""

import os

from setuptools import Extension, setup

_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-strict-aliasing"]

_OFF = os.environ.get("PCAPD_NO_EXTENSIONS", "") not in ("", "0")

setup(
    ext_modules=[] if _OFF else [
        Extension("pcapd._pcapngwalk", ["pcapd/_ext/pcapngwalk.c"], extra_compile_args=_FLAGS,
                  optional=True),
        Extension("pcapd._capture", ["pcapd/_ext/capture.c"], libraries=["pcap"],
                  extra_compile_args=_FLAGS, optional=True),
        Extension("pcapd._recorder", ["pcapd/_ext/recorder.c"], libraries=["pcap"],
                  extra_compile_args=_FLAGS, optional=True),
    ],
)  # fmt: skip
