"""``python -m train fit --config ...`` (see :mod:`train.cli`)."""
from train.cli import main

if __name__ == "__main__":
    main()
