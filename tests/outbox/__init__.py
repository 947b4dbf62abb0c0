"""Tests of homing.outbox (a package, so that its conftest and helpers have unique module names)."""
