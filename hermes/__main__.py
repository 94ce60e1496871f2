"""``python -m hermes``: the hermes command line (see hermes.cli)."""
from .cli import main

main(prog_name="hermes")
