"""Real databases for the outbox tests: a SQLite file, PostgreSQL and MariaDB on this machine.

Every test gets its own uniquely named tables, dropped afterwards, so runs never see each other's
rows. An unreachable server fails the test (scripts/setup starts the servers); it never skips.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Engine, Integer, String, Table, create_engine
from sqlalchemy.exc import OperationalError

from homing.clock import FakeClock
from homing.outbox import Outbox

SERVER_URLS = {
    "postgresql": os.environ.get(
        "HOMING_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get("HOMING_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
BACKENDS = ("sqlite", "postgresql", "mariadb")


def database_url(backend: str, directory: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{directory / 'outbox.sqlite'}"
    return SERVER_URLS[backend]


def connect(backend: str, url: str) -> Engine:
    """An engine that has reached its server once; a failure fails the calling test."""
    engine = create_engine(url)
    try:
        with engine.connect():
            pass
    except OperationalError as error:
        engine.dispose()
        pytest.fail(f"{backend} is not reachable at {url} (scripts/setup starts it): {error.orig}")
    return engine


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def url(backend: str, tmp_path: Path) -> str:
    return database_url(backend, tmp_path)


@pytest.fixture
def engine(backend: str, url: str) -> Iterator[Engine]:
    engine = connect(backend, url)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def outbox(engine: Engine, clock: FakeClock) -> Iterator[Outbox]:
    outbox = Outbox(table_name=f"homing_outbox_{secrets.token_hex(4)}", clock=clock)
    outbox.create_table(engine)
    yield outbox
    outbox.drop_table(engine)


@pytest.fixture
def orders(engine: Engine, outbox: Outbox) -> Iterator[Table]:
    """A business table in the outbox's metadata (as an application's own models would be)."""
    table = Table(
        f"orders_{secrets.token_hex(4)}",
        outbox.metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("item", String(100), nullable=False),
        mysql_engine="InnoDB",
    )
    table.create(engine)
    yield table
    table.drop(engine)
