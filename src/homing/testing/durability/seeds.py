"""Seeds and profiles: every run is reproducible from one printed number.

The *base seed* comes from ``HOMING_DURABILITY_SEED`` or, when unset, from the system's random
source (then printed). Each test derives its own seed from the base seed and its name
(:func:`derive_seed`), so one test can be replayed alone: ``HOMING_DURABILITY_SEED=<base> pytest
<test id>``. Fault timing (the gaps between kills, when a crash lands, which file is damaged, which
byte flips) is drawn from a :class:`random.Random` seeded with it; what the operating system
schedules around a real process is not, so process-level runs replay the same fault schedule
rather than the same interleaving.

The *profile* (``HOMING_DURABILITY_PROFILE``: ``ci``, the default, or ``soak``) sets how much each
fault test does: a few cycles that fit the CI budget, or hundreds (``scripts/soak``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass

__all__ = ["PROFILES", "Profile", "base_seed", "current_profile", "derive_seed"]

SEED_VARIABLE = "HOMING_DURABILITY_SEED"
PROFILE_VARIABLE = "HOMING_DURABILITY_PROFILE"

_base_seed: int | None = None


def base_seed() -> int:
    """The run's base seed (``HOMING_DURABILITY_SEED``, else drawn once per process)."""
    global _base_seed
    if _base_seed is None:
        text = os.environ.get(SEED_VARIABLE, "").strip()
        _base_seed = int(text) if text else secrets.randbits(32)
    return _base_seed


def derive_seed(base: int, name: str) -> int:
    """A seed for ``name`` (a test id) under ``base``: stable across runs and machines."""
    digest = hashlib.blake2b(f"{base}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    kill_cycles: int  # fault 1: kill -9 of the broker
    kill_gap_s: tuple[float, float]  # fault 1: time between the broker listening and its kill
    power_loss_cycles: int  # fault 2
    sends_per_cycle: tuple[int, int]  # in-process workloads: sends between two crashes
    torn_stride: int  # fault 3: every n-th byte of the last record (1: every byte)
    derived_damage_rounds: int  # fault 5: random extra rounds on top of the fixed matrix
    pause_cycles: int  # fault 8
    consumer_kills: int  # fault 9
    transactions: int  # fault 11
    poison_rounds: int  # fault 12
    clock_jump_rounds: int  # fault 13
    fuzz_examples: int  # fault 14: hypothesis examples per fuzz target
    raw_frame_examples: int  # fault 14: raw bytes sent over a real socket
    frame_fuzz_examples: int  # fault 14: HTTP/2 exchanges (malformed and mutated frames)
    eio_rounds: int  # fault 7


PROFILES = {
    "ci": Profile(
        name="ci",
        kill_cycles=25,
        kill_gap_s=(0.05, 0.3),
        power_loss_cycles=12,
        sends_per_cycle=(20, 120),
        torn_stride=1,
        derived_damage_rounds=2,
        pause_cycles=1,
        consumer_kills=6,
        transactions=24,
        poison_rounds=2,
        clock_jump_rounds=3,
        fuzz_examples=1500,
        raw_frame_examples=300,
        frame_fuzz_examples=4000,
        eio_rounds=4,
    ),
    "soak": Profile(
        name="soak",
        kill_cycles=300,
        kill_gap_s=(0.05, 0.3),
        power_loss_cycles=150,
        sends_per_cycle=(20, 400),
        torn_stride=1,
        derived_damage_rounds=20,
        pause_cycles=4,
        consumer_kills=30,
        transactions=120,
        poison_rounds=10,
        clock_jump_rounds=20,
        fuzz_examples=25_000,
        raw_frame_examples=5_000,
        frame_fuzz_examples=60_000,
        eio_rounds=30,
    ),
}


def current_profile() -> Profile:
    name = os.environ.get(PROFILE_VARIABLE, "ci").strip() or "ci"
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"{PROFILE_VARIABLE}={name!r}: one of {', '.join(PROFILES)}") from None
