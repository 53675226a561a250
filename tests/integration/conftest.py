"""Fixtures that start real servers: the embedded stack, once per test process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from api_helpers import Api, running_api
from psycopg import sql

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


def url_for(url: str, database: str) -> str:
    """`url` with its database name replaced."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@pytest.fixture
def database(endpoints: Endpoints) -> Iterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = url_for(endpoints.postgres_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield url_for(endpoints.postgres_url, name)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def api(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The scoring API and a worker, shared by the API's test modules (once per test process)."""
    with running_api(endpoints, tmp_path_factory.mktemp("api")) as running:
        yield running
