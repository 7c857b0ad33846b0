"""The intervention engine: the only place that hooks modules (cache, patch, ablate, steer, sweeps)."""
