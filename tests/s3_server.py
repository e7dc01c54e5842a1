"""A real S3-compatible server on loopback for tests: moto in server mode (``moto_server``).

Not a mocked client: pcapd's minio SDK speaks HTTP to it as it would to MinIO or AWS. Use
:func:`running_moto` from a fixture (module or session scope: a server takes ~1 s to start)
and give each test its own bucket (:func:`new_bucket`), so tests sharing a server stay
independent. The server listens on 127.0.0.1 only and is killed by its pid on exit.

What moto does not do (so tests assert it differently): it checks neither presigned URLs'
signatures nor their expiry, and it never runs lifecycle rules.

(Not named ``moto.py``: a name a reader would take for the moto package itself.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MOTO_SERVER = str(Path(sys.executable).with_name("moto_server"))
HOST = "127.0.0.1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # host:port, as storage.endpoint takes it
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"
    pid: int = 0
    """moto_server's process: a test may stop it (SIGSTOP) to stand for an S3 that stalls."""

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def storage(self, bucket: str, **settings: Any) -> dict[str, Any]:
        """A ``storage:`` section (mapping) for this server, to parse like a config file's."""
        return {
            "kind": "s3", "endpoint": self.endpoint, "bucket": bucket, "secure": False,
            "access_key": self.access_key, "secret_key": self.secret_key,
            "region": self.region, **settings,
        }


def new_bucket(prefix: str = "pcapd-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_moto(start_timeout: float = 30.0) -> Iterator[S3Server]:
    """``moto_server -H 127.0.0.1 -p PORT`` until the block ends; waits (bounded) until it
    accepts connections."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AWS_")}
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [MOTO_SERVER, "-H", HOST, "-p", str(port)],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=env,
        )
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                if process.poll() is not None:
                    output.seek(0)
                    raise RuntimeError(
                        f"moto_server exited with {process.returncode}: "
                        f"{output.read().decode(errors='replace')[-2000:]}"
                    )
                try:
                    socket.create_connection((HOST, port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"moto_server did not listen on {HOST}:{port} within "
                            f"{start_timeout} s"
                        ) from None
                    time.sleep(0.05)
            yield S3Server(f"{HOST}:{port}", pid=process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
