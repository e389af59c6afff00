"""``python -m lightning_lplr``: the ``lightning-lplr`` command line (:mod:`lightning_lplr.report.cli`)."""

import sys

from lightning_lplr.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
