"""Fixtures that start real servers: the embedded stack, once per test process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fraudstream.config import load_settings
from fraudstream.stack import Endpoints, Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("stack")
    running = Stack(load_settings(stack={"data_dir": data_dir}))
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def endpoints(stack: Stack) -> Endpoints:
    return stack.endpoints()
