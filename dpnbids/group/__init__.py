"""The group level's plain-Python orchestration: checks, group ICA, the engine runs of
dual regression and learning (the nipype factories in :mod:`dpnbids.workflows`), then
the published results (:mod:`dpnbids.group.level`, :mod:`dpnbids.group.classify`)."""
