"""Orchestration above the experiments: `reproduce` plans, times and runs every experiment of the
paper, then has the report layer render the result files (SPEC section 6)."""
