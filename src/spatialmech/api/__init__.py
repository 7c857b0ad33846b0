"""The public Python API: `import spatialmech as sm`.

It sits at the top, beside the CLI (which is a thin layer over it), and speaks words, pictures and
plain data instead of token ids, nested image lists and experiment contexts:

    model = sm.load_model("bundled")
    inputs = model.inputs(image, "The color of the square to the left of the green square is")
    engine = sm.Engine(model)
    engine.answer_probabilities(inputs, ["Red", "Blue"])      # spelling variants summed for you
    inputs.image_tokens[0].box(28, 140, 84, 196)              # LM positions of a pixel box
    result = sm.run("last-token", model, task="squares", n=8)
    result.metrics, result.tables["curves"], result.figure(), result.save("out/")
"""

from spatialmech.api.model import Engine, ImageTokenMap, Inputs, Model, load_model
from spatialmech.api.run import (
    EXPERIMENT_NEEDS,
    Result,
    describe_support,
    load_task,
    require_support,
    run,
    supported_experiments,
)
from spatialmech.engine import Ablate, Patch, Steer, add_direction, amplify_projection
from spatialmech.models.base import SYNTHETIC_SYSTEM_PROMPT
from spatialmech.tasks.custom import CustomTask

__all__ = [
    "EXPERIMENT_NEEDS",
    "SYNTHETIC_SYSTEM_PROMPT",
    "Ablate",
    "CustomTask",
    "Engine",
    "ImageTokenMap",
    "Inputs",
    "Model",
    "Patch",
    "Result",
    "Steer",
    "add_direction",
    "amplify_projection",
    "describe_support",
    "load_model",
    "load_task",
    "require_support",
    "run",
    "supported_experiments",
]
