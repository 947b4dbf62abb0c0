"""Tests of homing.inbox (a package, so that its conftest has a unique module name)."""
