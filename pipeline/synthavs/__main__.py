"""``python -m pipeline.synthavs`` (see :mod:`pipeline.synthavs.cli`)."""
from pipeline.synthavs.cli import main

main()
