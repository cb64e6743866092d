"""Synthetic BIDS cohorts with planted, documented responder effects (and a null mode)."""
