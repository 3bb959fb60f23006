"""``python -m train fit --config ...`` (see :mod:`train.cli`); user errors print one line (``--debug``: traceback)."""
import sys

from pipeline.errors import run_cli
from train.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
