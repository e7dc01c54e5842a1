"""Fixtures of the store tests: one moto server per test module, a bucket per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.s3_server import S3Server, running_moto


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with running_moto() as server:
        yield server
