"""Orchestration above the experiments: `reproduce` plans, times and runs every experiment of the
paper, then has the report layer render the result files (SPEC section 6); and running work beyond
one process: the Ray worker pool (`spatialmech.pipeline.workers`), which schedules units and never
computes results itself. Ray is an optional extra (`pip install -e .[distributed]`); importing this
package does not need it."""
