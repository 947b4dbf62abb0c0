"""Real databases and Redis for the inbox tests.

SQLite (a file), PostgreSQL and MariaDB on this machine, and Redis on 127.0.0.1:6379. Each test
gets its own table or key namespace, removed afterwards. An unreachable server fails the test
(scripts/setup starts the servers); it never skips.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, create_engine
from sqlalchemy.exc import OperationalError

from homing.clock import FakeClock
from homing.inbox import Inbox

SERVER_URLS = {
    "postgresql": os.environ.get(
        "HOMING_TEST_POSTGRESQL_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get("HOMING_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}
REDIS_URL = os.environ.get("HOMING_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'inbox.sqlite'}"
    return SERVER_URLS[backend]


@pytest.fixture
def engine(backend: str, url: str) -> Iterator[Engine]:
    engine = create_engine(url)
    try:
        with engine.connect():
            pass
    except OperationalError as error:
        engine.dispose()
        pytest.fail(f"{backend} is not reachable at {url} (scripts/setup starts it): {error.orig}")
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metadata() -> MetaData:
    return MetaData()


@pytest.fixture
def inbox(engine: Engine, metadata: MetaData, clock: FakeClock) -> Iterator[Inbox]:
    inbox = Inbox(
        "payments", table_name=f"homing_inbox_{secrets.token_hex(4)}", metadata=metadata, clock=clock
    )
    inbox.create_table(engine)
    yield inbox
    inbox.drop_table(engine)


@pytest.fixture
def effects(engine: Engine, metadata: MetaData) -> Iterator[Table]:
    """The handler's business table: one row per effect (no unique key, so duplicates show)."""
    table = Table(
        f"effects_{secrets.token_hex(4)}",
        metadata,
        Column("row_id", Integer, primary_key=True, autoincrement=True),
        Column("message_id", String(128), nullable=False),
        Column("worker", String(50), nullable=False),
        mysql_engine="InnoDB",
    )
    table.create(engine)
    yield table
    table.drop(engine)


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        client.ping()
    except redis.ConnectionError as error:
        client.close()
        pytest.fail(f"Redis is not reachable at {REDIS_URL} (scripts/setup starts it): {error}")
    yield client
    client.close()


@pytest.fixture
def redis_namespace(redis_client: redis.Redis) -> Iterator[str]:
    namespace = f"homing-test:{secrets.token_hex(4)}"
    yield namespace
    for key in redis_client.scan_iter(match=f"{namespace}:*"):
        redis_client.delete(key)
