"""Public helpers for testing code that uses Homing: a real broker process on 127.0.0.1."""

from homing.testing.broker_process import BrokerProcess, BrokerStartError, free_port, seed_metadata

__all__ = ["BrokerProcess", "BrokerStartError", "free_port", "seed_metadata"]
