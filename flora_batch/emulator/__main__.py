"""``python -m flora_batch.emulator``: the same as ``flora-batch emulator``."""

from .serve import emulator_command

if __name__ == "__main__":
    emulator_command(prog_name="python -m flora_batch.emulator")
