"""Sphinx configuration of the dpnbids manual (MyST Markdown pages).

Build it as CI does, with warnings as errors::

    .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build
"""
from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))

import dpnbids  # noqa: E402 - importable only once the repository root is on sys.path

project = "dpnbids"
author = "the dpnbids developers"
copyright = "2026, the dpnbids developers"  # the name Sphinx reads
release = version = dpnbids.__version__

extensions = ["myst_parser", "dpnbids_docs"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "README.md"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
nitpicky = True
smartquotes = False  # option names such as --fmriprep-dir must keep their two hyphens
html_theme = "alabaster"
html_title = f"dpnbids {release}"
html_theme_options = {"description": "Predict treatment response from resting-state fMRI",
                      "fixed_sidebar": True}
