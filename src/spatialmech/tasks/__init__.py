"""Tasks: synthetic stimuli, real benchmark loaders, counterfactual pairs."""
