"""Learning: the 3D-CNN, nested cross-validation, metrics and the saved model bundle.
Imports no nipype.

TensorFlow's oneDNN kernels are asked for here, before any TensorFlow import this package
makes, for programmatic users too (the CLI chooses the backend and its threads in
:func:`dpnbids.learn.backend.configure`): without them TensorFlow trains the VoxNet on
few input channels one to two orders of magnitude slower on CPUs where it turns oneDNN
off by default (benchmarks/README.md). A value the user set is kept.
"""
import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
