"""`python -m flora_batch` runs the CLI."""

from .cli import main

main()
