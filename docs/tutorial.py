# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # spatialmech in a notebook
#
# Load a model, draw your own image, find its image tokens, patch a region, reproduce one paper
# figure, and run amplification on a custom data set. Everything runs on the bundled tiny Qwen2-VL
# on a CPU in about a minute.

# %%
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

import spatialmech as sm

model = sm.load_model("bundled")  # or a checkpoint folder / hub id, device="cuda", dtype="bfloat16"
model

# %% [markdown]
# ## Draw your own image
#
# The model sees its image as a grid of tokens (`model.grid`). Drawing objects on whole tokens keeps
# each object on its own tokens.

# %%
grid = model.grid
side, cell = grid.image_size, grid.pixels_per_token
colours = {"Red": (255, 0, 0), "Green": (0, 255, 0), "Blue": (0, 0, 255)}  # the authors' palette


def draw(order):
    """Three 2x2-token squares in a row, coloured in `order`; returns the image and their pixel boxes."""
    image = Image.new("RGB", (side, side), "white")
    pen = ImageDraw.Draw(image)
    boxes = {}
    for slot, name in enumerate(order):
        x0, y0 = (1 + 4 * slot) * cell, 5 * cell
        boxes[name] = (x0, y0, x0 + 2 * cell, y0 + 2 * cell)
        pen.rectangle((x0, y0, x0 + 2 * cell - 1, y0 + 2 * cell - 1), fill=colours[name])
    return image, boxes


image, boxes = draw(["Red", "Green", "Blue"])
prompt = "The color of the square to the left of the green square is "  # trailing space, as theirs
inputs = model.inputs(image, prompt, system=sm.SYNTHETIC_SYSTEM_PROMPT)
engine = sm.Engine(model)
print(engine.predict(inputs), engine.answer_probabilities(inputs, ["Red", "Blue"]))
image

# %% [markdown]
# ## Find its image tokens
#
# `inputs.image_tokens[row]` maps the picture to LM positions: a pixel box, a grid cell, a strip.

# %%
tokens = inputs.image_tokens[0]
red = tokens.box(*boxes["Red"])
print("grid", tokens.shape, "| red square at", red.tolist(), "| cell (5, 1):", tokens.cell(5, 1).tolist())
print("a vertical strip (columns 1-2):", tokens.strip("vertical", 1, 3).tolist())

# %% [markdown]
# ## Patch a region
#
# A second picture has blue where the red square was. Record its visual tokens (`projector.out`) at
# one region and write them into the first picture's run at the same positions. Patching the red
# square's own tokens changes nothing; patching the *reference* (green) square's tokens makes the
# model answer Blue: this model reads the answer off the reference object's tokens, which know their
# neighbours (see the findings).

# %%
other, _ = draw(["Blue", "Green", "Red"])
other_inputs = model.inputs(other, prompt, system=sm.SYNTHETIC_SYSTEM_PROMPT)
print("clean   P(Red), P(Blue):", engine.answer_probabilities(inputs, ["Red", "Blue"]).tolist())
for region in ("Red", "Green"):
    positions = tokens.box(*boxes[region])
    recorded = engine.cache(other_inputs, ["projector.out"], [positions])["projector.out"]
    patch = sm.Patch("projector.out", [positions], recorded)
    print(f"patch {region:5s} P(Red), P(Blue):", engine.answer_probabilities(inputs, ["Red", "Blue"], [patch]).tolist())

# %% [markdown]
# ## Reproduce a paper figure in a few lines
#
# Last-token patching (paper Fig. 3): which layer's last-token residual carries the answer's
# position, and which its colour. `n` is the number of counterfactual pairs (the paper uses 50).

# %%
result = sm.run("last-token", model, task="squares", n=4)
print({k: result.metrics[k] for k in ("n_pairs", "dominant", "ordering_layers")})
result.tables["curves"][:3]

# %%
result.figure()

# %% [markdown]
# ## Amplification on your own data
#
# Your data set is a folder with `items.jsonl` and images (see "Your own data" in the docs). Here we
# write one with `spatialmech render` (forced-choice scenes), then amplify the ordering direction on it.

# %%
from spatialmech.cli import main as spatialmech_cli  # the command line, from Python

folder = Path(tempfile.mkdtemp()) / "my_scenes"
spatialmech_cli(["render", "scenes", "--out", str(folder), "--n", "24"])
data = sm.load_task(folder / "items.jsonl", model)
print(sm.describe_support(data))
amplified = sm.run("amplify", model, task=data, n=8, alphas=[0, 10])
{k: amplified.metrics[k] for k in ("baseline_accuracy", "best_alpha", "accuracy", "fails_fixed", "random_accuracy")}
