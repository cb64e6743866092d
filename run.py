#!/usr/bin/env python3
"""BIDS-Apps entry point: ``python run.py BIDS_DIR OUTPUT_DIR {participant,group} [options]``."""
import sys

from dpnbids.cli.run import main

if __name__ == "__main__":
    sys.exit(main())
