"""The public surface of homing.outbox and homing.inbox: exactly what __all__ says."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

import homing.inbox
import homing.outbox
from homing.errors import HomingError


@pytest.mark.parametrize("package", [homing.outbox, homing.inbox])
def test_all_lists_every_public_name_and_nothing_else(package: types.ModuleType) -> None:
    exported = set(package.__all__)
    public = {
        name
        for name in dir(package)
        if not name.startswith("_")
        and name not in {"annotations", "importlib", "TYPE_CHECKING", "Final"}
        and not isinstance(getattr(package, name), types.ModuleType)
    }
    assert exported == public
    for name in exported:
        assert getattr(package, name) is not None


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nonexistent'"):
        homing.outbox.Nonexistent  # noqa: B018


@pytest.mark.parametrize("package", [homing.outbox, homing.inbox])
def test_errors_share_homing_root(package: types.ModuleType) -> None:
    errors = [
        value
        for value in (getattr(package, name) for name in package.__all__)
        if isinstance(value, type) and issubclass(value, Exception)
    ]
    assert errors
    assert all(issubclass(error, HomingError) for error in errors)


def test_the_homing_command_does_not_need_the_db_extra() -> None:
    # `homing broker` must start on an install without SQLAlchemy: the outbox loads it lazily.
    check = "import sys, homing.cli; assert 'sqlalchemy' not in sys.modules, 'sqlalchemy imported'"
    completed = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
