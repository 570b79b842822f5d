"""Install size: ``pip install <this checkout>[extras]`` into fresh virtualenvs, and the
size of each one's site-packages (docs/performance.md, "A lean install").

    python -m bench.install                        # runtime only, then each extra
    python -m bench.install --extras "" parquet    # some of them

Each install is a new ``python -m venv`` (this interpreter's version) in a temporary
folder; the size is what ``site-packages`` takes on disk (as ``du -s`` counts it),
pip and setuptools included, as a user's venv has them.  Then the installed
``flora-batch --version`` and ``--help`` must run: a wheel that leaves a module out
fails here, not on a user's machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from .common import REPO

MIB = 1024 * 1024


def size_of(folder: Path) -> int:
    """Bytes the files under ``folder`` take on disk, as ``du -s`` counts them."""
    return sum(p.lstat().st_blocks * 512 for p in folder.rglob("*"))


def install(extra: str, where: Path) -> tuple[int, list[str]]:
    """A fresh venv with flora-batch (and ``extra``): its site-packages size, its packages."""
    venv = where / (extra or "core")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    target = f"{REPO}[{extra}]" if extra else str(REPO)
    subprocess.run([str(python), "-m", "pip", "install", "-q", target], check=True)
    for args in (["--version"], ["--help"]):
        subprocess.run(
            [str(venv / "bin" / "flora-batch"), *args], check=True, stdout=subprocess.DEVNULL
        )
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    frozen = subprocess.run(
        [str(python), "-m", "pip", "freeze"], check=True, capture_output=True, text=True
    ).stdout.split()
    return size_of(site), frozen


def main() -> None:
    """Install each variant and print its size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", nargs="*", default=["", "parquet", "video"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flora-install-") as tmp:
        for extra in args.extras:
            size, frozen = install(extra, Path(tmp))
            name = f"flora-batch[{extra}]" if extra else "flora-batch"
            print(f"{name:24} {size / MIB:6.0f} MiB of site-packages, {len(frozen)} packages")


if __name__ == "__main__":
    main()
