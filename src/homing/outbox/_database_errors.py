"""What a database error means, across the drivers Homing supports.

SQLAlchemy wraps every driver error in :class:`sqlalchemy.exc.DBAPIError` but leaves the driver's
own code in ``.orig``; the codes differ per driver, so they are read here, in one place:

================  ======================  =====================  ====================================
question          PostgreSQL (psycopg)    MySQL/MariaDB          SQLite (sqlite3)
================  ======================  =====================  ====================================
key conflict      SQLSTATE 23505          errno 1062             SQLITE_CONSTRAINT_PRIMARYKEY, _UNIQUE
retry the txn     SQLSTATE 40001, 40P01   errno 1213 (deadlock)  -
================  ======================  =====================  ====================================

"Retry the transaction" errors mean the database chose this transaction as the victim of a
conflict and rolled it back; running the same transaction again is correct and usually succeeds.
A lock wait timeout is deliberately not among them: it means another transaction holds the row for
a long time, and waiting again would only delay the caller's own error handling.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, IntegrityError

__all__ = ["is_key_conflict", "is_transaction_conflict"]

_POSTGRESQL_UNIQUE_VIOLATION = "23505"
_POSTGRESQL_RETRY = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected
_MYSQL_DUPLICATE_ENTRY = 1062
_MYSQL_RETRY = frozenset({1213})  # ER_LOCK_DEADLOCK
_SQLITE_KEY_CONFLICTS = frozenset({"SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE"})


def _sqlstate(error: DBAPIError) -> str | None:
    value = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return value if isinstance(value, str) else None


def _mysql_errno(error: DBAPIError) -> int | None:
    arguments = getattr(error.orig, "args", ())
    if arguments and isinstance(arguments[0], int):
        return arguments[0]
    return None


def _sqlite_name(error: DBAPIError) -> str | None:
    value = getattr(error.orig, "sqlite_errorname", None)
    return value if isinstance(value, str) else None


def is_key_conflict(error: DBAPIError) -> bool:
    """Whether ``error`` is a unique or primary key violation.

    Only meaningful for an insert that Homing issued itself with every column filled in: then no
    other integrity error is possible. For a driver this module does not know, an integrity error
    of such an insert is taken as a key conflict for that reason.
    """
    # MySQL drivers first: PyMySQL also sets a ``sqlstate``, but MySQL's is the generic 23000.
    errno = _mysql_errno(error)
    if errno is not None:
        return errno == _MYSQL_DUPLICATE_ENTRY
    name = _sqlite_name(error)
    if name is not None:
        return name in _SQLITE_KEY_CONFLICTS
    state = _sqlstate(error)
    if state is not None:
        return state == _POSTGRESQL_UNIQUE_VIOLATION
    return isinstance(error, IntegrityError)


def is_transaction_conflict(error: DBAPIError) -> bool:
    """Whether the database rolled the transaction back as a conflict victim (safe to rerun)."""
    errno = _mysql_errno(error)
    if errno is not None:
        return errno in _MYSQL_RETRY
    if _sqlite_name(error) is not None:
        return False
    state = _sqlstate(error)
    return state is not None and state in _POSTGRESQL_RETRY
