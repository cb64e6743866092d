"""Group-level science on arrays: group ICA and its model order, dual regression,
masks and grids, component statistics and network labels. Imports no nipype."""
