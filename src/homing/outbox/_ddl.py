"""DDL text for a table, per database, for migrations written by hand and for the docs."""

from __future__ import annotations

from sqlalchemy import Table
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import CreateIndex, CreateTable

__all__ = ["table_ddl"]


def _dialect(name: str) -> Dialect:
    if name == "postgresql":
        return postgresql.dialect()  # type: ignore[no-untyped-call]
    if name == "sqlite":
        return sqlite.dialect()
    if name == "mariadb":
        return mysql.dialect(is_mariadb=True)
    if name == "mysql":
        return mysql.dialect()
    raise ValueError(f"unknown dialect {name!r}")


def table_ddl(table: Table, dialect_name: str) -> str:
    """``CREATE TABLE`` and ``CREATE INDEX`` statements for ``table``, each ending with ``;``."""
    dialect = _dialect(dialect_name)
    statements = [str(CreateTable(table).compile(dialect=dialect)).strip()]
    for index in sorted(table.indexes, key=lambda index: str(index.name)):
        statements.append(str(CreateIndex(index).compile(dialect=dialect)).strip())
    # SQLAlchemy ends each column line with ", " and indents with tabs; tidy both for reading.
    tidy = (
        "\n".join(line.rstrip().replace("\t", "    ") for line in statement.splitlines())
        for statement in statements
    )
    return "\n\n".join(statement + ";" for statement in tidy)
