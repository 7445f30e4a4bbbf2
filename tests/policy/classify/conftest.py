"""A body-work pool for the classifier tests: its own threads, shut down after each test."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from proxy.offload import Offload


@pytest.fixture
def offload() -> Iterator[Offload]:
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-body-work")
    yield Offload(pool)
    pool.shutdown(wait=True)
