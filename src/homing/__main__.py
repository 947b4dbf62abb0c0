"""``python -m homing``: the ``homing`` command, for environments where the script is not on PATH."""

from homing.cli import main

if __name__ == "__main__":
    main(prog_name="homing")
