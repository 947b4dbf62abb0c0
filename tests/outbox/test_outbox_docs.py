"""docs/OUTBOX-INBOX.md shows the DDL the code creates, for every database, and nothing stale."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import Table

from homing.inbox import Inbox
from homing.outbox import Outbox
from homing.outbox._ddl import table_ddl

DOC = Path(__file__).resolve().parents[2] / "docs" / "OUTBOX-INBOX.md"
BLOCK = re.compile(r"<!-- ddl (\w+) (\w+) -->\n```sql\n(.*?)\n```", re.DOTALL)
TABLES: dict[str, Table] = {"outbox": Outbox().table, "inbox": Inbox("any").table}


def documented() -> dict[tuple[str, str], str]:
    return {(table, dialect): ddl for table, dialect, ddl in BLOCK.findall(DOC.read_text())}


@pytest.mark.parametrize("table", ["outbox", "inbox"])
@pytest.mark.parametrize("dialect", ["postgresql", "mariadb", "sqlite"])
def test_documented_ddl_is_what_the_code_creates(table: str, dialect: str) -> None:
    assert documented()[(table, dialect)] == table_ddl(TABLES[table], dialect)


def test_every_ddl_block_is_checked() -> None:
    assert len(documented()) == 6
