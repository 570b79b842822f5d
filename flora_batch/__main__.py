"""`python -m flora_batch` runs the CLI."""

from .cli.main import main

main()
