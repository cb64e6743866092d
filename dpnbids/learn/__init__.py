"""Learning: the 3D-CNN, nested cross-validation, metrics and the saved model bundle.
Imports no nipype."""
