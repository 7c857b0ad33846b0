"""Prompts verbatim and the palette's RGB values as the authors' code writes them (issue 17 point 2).

Each test names the file of theirs it follows (GitHub Nix07/spatial-variable-binding).
"""

from __future__ import annotations

from spatialmech.models.base import SYNTHETIC_SYSTEM_PROMPT
from spatialmech.models.qwen2_vl import Adapter as Qwen2VL
from spatialmech.tasks import get_task
from spatialmech.tasks.geometry import PIXTRAL
from spatialmech.tasks.vocabulary import PIXTRAL_SQUARE_COLORS, SQUARE_COLORS


def test_system_prompt():
    """Follows shared/prompts.py (DEFAULT_SYSTEM_TEXT)."""
    assert SYNTHETIC_SYSTEM_PROMPT == "You are a helpful assistant. You respond in one token."


def test_palette_rgb():
    """Follows shared/palette.py: COLOR_RGB_DEFAULT (pure green, not HTML's (0, 128, 0)) and
    COLOR_RGB_PIXTRAL (Orange for Brown)."""
    assert SQUARE_COLORS == {
        "Red": (255, 0, 0), "Green": (0, 255, 0), "Blue": (0, 0, 255),
        "Black": (0, 0, 0), "Brown": (150, 75, 0), "Gray": (128, 128, 128),
    }
    assert PIXTRAL_SQUARE_COLORS == {
        "Red": (255, 0, 0), "Green": (0, 255, 0), "Blue": (0, 0, 255),
        "Black": (0, 0, 0), "Orange": (255, 165, 0), "Gray": (128, 128, 128),
    }
    item = get_task("squares").layout_item(("Green", "Red", "Blue"), "horizontal", "right")
    assert item.objects[0].color == (0, 255, 0)
    image = get_task("squares").image(item)
    x0, y0, x1, y1 = item.objects[0].box_px
    assert image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == (0, 255, 0)


def test_squares_prompt():
    """Follows behavioral_analysis/src/tasks/squares.py: trailing space, reference colour lower case."""
    task = get_task("squares")
    left = task.layout_item(("Blue", "Green", "Red"), "horizontal", "left")
    assert (left.prompt, left.answer) == ("The color of the square to the left of the green square is ", "Blue")
    above = task.layout_item(("Blue", "Green", "Red"), "vertical", "above")
    assert above.prompt == "The color of the square above the green square is "


def test_shapes_prompt_asks_for_the_colour():
    """Follows behavioral_analysis/src/tasks/shapes.py: the middle shape named by colour and shape, the
    answer the target's colour; shapes and colours zipped one to one (Square/Red ... Heart/Gray)."""
    task = get_task("shapes")
    assert task.attributes == ("Red", "Green", "Blue", "Black", "Brown", "Gray")
    item = task.layout_item(("Green", "Red", "Black"), "horizontal", "right")
    assert item.prompt == "The color of the shape to the right of the red square is "
    assert item.answer == "Black" and item.answer_variants == [" Black", "Black", " black", "black"]
    assert [(o.shape, o.color) for o in item.objects] == [("circle", (0, 255, 0)), ("square", (255, 0, 0)), ("star", (0, 0, 0))]
    below = task.layout_item(("Blue", "Gray", "Brown"), "vertical", "below")
    assert (below.prompt, below.answer) == ("The color of the shape below the gray heart is ", "Brown")
    assert len(task) == 480
    pixtral = get_task("shapes", geometry=PIXTRAL)
    cross = pixtral.layout_item(("Red", "Orange", "Blue"), "horizontal", "left")
    assert cross.prompt == "The color of the shape to the left of the orange cross is "
    assert cross.objects[1].color == (255, 165, 0)


def test_objects_and_whatsup_prompts():
    """Follows behavioral_analysis/src/tasks/objects.py ("The object {prep} the {middle} is a(n) ") and
    whatsup.py ("The object on the floor {prep} the {middle} is a(n) "), trailing space included."""
    item = get_task("objects").layout_item(("apple", "key", "rose"), "horizontal", "left")
    assert (item.prompt, item.answer) == ("The object to the left of the key is a(n) ", "apple")
    from spatialmech.tasks.vocabulary import RELATION_PHRASES, WHATSUP_TEMPLATE

    text = WHATSUP_TEMPLATE.format(relation=RELATION_PHRASES["right"], reference="chair")
    assert text == "The object on the floor to the right of the chair is a(n) "


def test_trailing_space_reaches_the_model():
    """Follows shared/prompts.py (chat_prompt): the text is the user turn as written; Qwen2-VL's template
    keeps the trailing space, so the token before the turn's end is the space."""
    adapter = Qwen2VL.tiny(tokens_per_side=12)
    task = get_task("squares", geometry=adapter.grid_spec())
    item = task.items(1)[0]
    inputs = adapter.build_inputs([[task.image(item)]], [item.prompt], system=SYNTHETIC_SYSTEM_PROMPT)
    text = adapter.tokenizer.decode(inputs.model_kwargs["input_ids"][0])
    assert f"{item.prompt}<|im_end|>" in text
    assert "<|im_start|>system\nYou are a helpful assistant. You respond in one token.<|im_end|>" in text
