"""Running work beyond one process: the Ray worker pool (`spatialmech.pipeline.workers`).

Above experiments in the layer order: it schedules their units, it never computes results itself.
Ray is an optional extra (`pip install -e .[distributed]`); importing this package does not need it.
"""
