"""``scripts/soak``: run the durability tests again and again, each time with a new seed, for hours.

Each iteration runs ``pytest tests/durability`` in the soak profile (hundreds of kill cycles, over
100 000 fuzz inputs; ``--profile ci`` for the short one) with its own base seed, derived from the
soak's seed and the iteration number, and its results merged into one table, printed after every
iteration and written as JSON (``tests/durability/results/soak-latest.json`` unless ``--output``).
A failing iteration prints the command that replays it; the soak stops there unless
``--keep-going``. An iteration under way when the time is up finishes first.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from homing.testing.durability.results import ResultsTable
from homing.testing.durability.seeds import PROFILE_VARIABLE, PROFILES, SEED_VARIABLE, derive_seed

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[4]
RESULTS_VARIABLE = "HOMING_DURABILITY_RESULTS"


def parser() -> argparse.ArgumentParser:
    arguments = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    arguments.add_argument(
        "--minutes", type=float, required=True, help="how long to keep starting iterations"
    )
    arguments.add_argument(
        "--seed", type=int, default=None, help="the soak's seed (default: random, printed)"
    )
    arguments.add_argument("--profile", choices=sorted(PROFILES), default="soak")
    arguments.add_argument("-k", dest="select", default="", help="pytest -k expression: only some faults")
    arguments.add_argument("--output", type=Path, default=REPO / "tests/durability/results/soak-latest.json")
    arguments.add_argument("--keep-going", action="store_true", help="continue after a failing iteration")
    arguments.add_argument(
        "--iterations", type=int, default=0, help="stop after this many (0: only the time)"
    )
    return arguments


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    soak_seed = args.seed if args.seed is not None else secrets.randbits(32)
    deadline = time.monotonic() + args.minutes * 60
    total = ResultsTable(seed=soak_seed, profile=args.profile, sessions=0)
    failures: list[str] = []
    print(
        f"soak seed {soak_seed} (replay: scripts/soak --seed {soak_seed}), profile {args.profile}", flush=True
    )
    iteration = 0
    with tempfile.TemporaryDirectory(prefix="homing-soak-") as scratch:
        while time.monotonic() < deadline and (not args.iterations or iteration < args.iterations):
            iteration += 1
            seed = derive_seed(soak_seed, f"iteration-{iteration}") % (1 << 32)
            results = Path(scratch) / f"iteration-{iteration}.json"
            environment = {
                **os.environ,
                SEED_VARIABLE: str(seed),
                PROFILE_VARIABLE: args.profile,
                RESULTS_VARIABLE: str(results),
            }
            command = [sys.executable, "-m", "pytest", "tests/durability", "-q", "-p", "no:cacheprovider"]
            if args.select:
                command += ["-k", args.select]
            started = time.monotonic()
            print(f"\n== iteration {iteration}: seed {seed}", flush=True)
            code = subprocess.run(command, cwd=REPO, env=environment, check=False).returncode
            if results.exists():
                total.add_records(ResultsTable.read(results).records)
            total.sessions += 1
            total.write(args.output)
            print(f"== iteration {iteration} took {time.monotonic() - started:.0f} s; so far:", flush=True)
            print(total.markdown(), flush=True)
            if code != 0:
                variables = f"{SEED_VARIABLE}={seed} {PROFILE_VARIABLE}={args.profile}"
                replay = f"{variables} .venv/bin/pytest tests/durability"
                failures.append(f"iteration {iteration} (exit {code}): replay with {replay}")
                print(f"== iteration {iteration} FAILED: replay with {replay}", flush=True)
                if not args.keep_going:
                    break
    print(
        f"\nsoak: {iteration} iteration(s), {len(total.records)} checked runs; table written to {args.output}"
    )
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures or not total.passed else 0


if __name__ == "__main__":
    sys.exit(main())
