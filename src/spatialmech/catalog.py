"""The one list of experiments: their names, in the paper's order, and the module that runs each.

Everything that names experiments derives from here: the CLI's choices (`spatialmech run`), the
report's section order, the runner's module lookup and the reproduce plan's check that it covers
every experiment. Kept free of imports so that the CLI and the report (which must not import the
experiments) can read it. Tasks have their own registry in `spatialmech.tasks` (`TASKS`).
"""

from __future__ import annotations

# experiment name -> module under spatialmech.experiments (insertion order = the paper's order)
EXPERIMENT_MODULES: dict[str, str] = {
    "behavior": "behavior",
    "last-token": "last_token",
    "probe": "probe",
    "criss-cross": "criss_cross",
    "ablate-vision": "ablate_vision",
    "backup": "backup",
    "amplify": "amplify",
}
EXPERIMENTS: tuple[str, ...] = tuple(EXPERIMENT_MODULES)

# What each experiment needs from custom data, checked before it runs (`api.supported_experiments`):
# (counterfactual kinds, objects per item, the need in words). Probe also needs three objects with
# ordinals and grid cells along an axis; backup's reversed counterfactuals need their own sources.
EXPERIMENT_NEEDS: dict[str, tuple[tuple[str, ...], int, str]] = {
    "behavior": ((), 0, ""),
    "last-token": (("opposite_query",), 2, "'opposite_query' counterfactuals and objects"),
    "probe": ((), 3, "three objects per image with ordinal positions and grid cells, as render writes for grid tasks"),
    "criss-cross": (("reversed",), 2, "'reversed' counterfactuals and object boxes"),
    "ablate-vision": (("alone", "blank"), 1, "'alone' and 'blank' counterfactuals and object boxes"),
    "backup": (("alone", "blank", "reversed"), 2,
               "'alone', 'blank' and 'reversed' counterfactuals (the reversed ones with their own 'alone' and 'blank') and object boxes"),
    "amplify": ((), 2, "a subject and a reference object box per item"),
}


def check_batch_size(batch_size: int, n: int | None = None) -> None:
    """The one check of --batch-size (and --n where the command has it), before any model is loaded."""
    from spatialmech.errors import UserInputError

    if batch_size < 1:
        raise UserInputError(f"--batch-size {batch_size} must be at least 1", "pass a positive batch size")
    if n is not None and n < 1:
        raise UserInputError(f"--n {n} must be at least 1", "pass a positive number of items")
