"""``python -m pipeline.synthavs`` (see :mod:`pipeline.synthavs.cli`): bad input is one ``error:`` line, exit 2."""
import sys

from pipeline.errors import run_cli
from pipeline.synthavs.cli import main

sys.exit(run_cli(main))
