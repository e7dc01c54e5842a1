"""The compiled hot loops (see docs/decisions.md, "A compiled core"); the rest is setup.cfg.

Both extensions are optional: where there is no compiler (a laptop installing the client),
the install goes on without them and pcapd uses its pure-Python twins (``pcapd._accel``).
"""

from setuptools import Extension, setup

_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-strict-aliasing"]

setup(
    ext_modules=[
        Extension("pcapd._pcapngwalk", ["pcapd/_ext/pcapngwalk.c"], extra_compile_args=_FLAGS,
                  optional=True),
        Extension("pcapd._capture", ["pcapd/_ext/capture.c"], libraries=["pcap"],
                  extra_compile_args=_FLAGS, optional=True),
    ],
)  # fmt: skip
