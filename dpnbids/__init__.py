"""dpnbids: predict treatment response in painful diabetic neuropathy from resting-state fMRI.

A BIDS App implementing (and tightening) Teh et al., Neuroinformatics 21:35-43 (2023).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
