"""Every word our synthetic tasks put in a prompt or expect as an answer, in one place.

The bundled model's tokenizer is trained so that each of these words is a single token (with and
without a leading space), because answers are scored by the first next token (SPEC section 3). A
generator that needs a new word must add it here; a test checks that every generated prompt and
answer uses only these words.

Prompt schemes (SPEC sections 3 and 7), verbatim as the authors' task files write them, trailing
space included (behavioral_analysis/src/tasks/{squares,shapes,objects,whatsup}.py):
- squares: "The color of the square to the left of the green square is " -> "Blue"
  (vertical: "The color of the square above the green square is "); answers are capitalised colours.
- shapes: the reference named by colour and shape, the answer a colour:
  "The color of the shape to the left of the red square is " -> "Green". Shapes and colours are paired
  one to one (Square/Red ... Heart/Gray), so a shape's colour names it: the task's attributes are colours.
- objects: "The object to the left of the key is a(n) " -> "apple". The paper's neutral "a(n)" is kept
  so the article never hints at the answer. Answers are lower-case nouns.
- scenes (and COCO-spatial): the forced-choice prompts of `prompts.py`; answers left/right/above/below.
"""

from __future__ import annotations

import re

# Squares and shapes: colour name -> RGB, the authors' shared/palette.py COLOR_RGB_DEFAULT.
SQUARE_COLORS: dict[str, tuple[int, int, int]] = {
    "Red": (255, 0, 0),
    "Green": (0, 255, 0),
    "Blue": (0, 0, 255),
    "Black": (0, 0, 0),
    "Brown": (150, 75, 0),
    "Gray": (128, 128, 128),
}

# Shapes: the paper's fixed shape-colour pairs.
SHAPE_COLORS: dict[str, str] = {
    "Square": "Red",
    "Circle": "Green",
    "Triangle": "Blue",
    "Star": "Black",
    "Cross": "Brown",
    "Heart": "Gray",
}

# Objects: our procedurally drawn icons (see `drawing.py`).
OBJECT_NAMES: tuple[str, ...] = ("apple", "bell", "bomb", "hat", "key", "orange", "pot", "rose")

# Pixtral's variant of the grid tasks (the authors' shared/palette.py COLOR_RGB_PIXTRAL and
# behavioral_analysis/src/tasks/objects.py): Orange (255, 165, 0) takes Brown's place (Pixtral calls a
# thin brown cross red), and the "bomb" icon is dropped (7 objects, 840 items).
PIXTRAL_SQUARE_COLORS: dict[str, tuple[int, int, int]] = {
    ("Orange" if name == "Brown" else name): ((255, 165, 0) if name == "Brown" else rgb) for name, rgb in SQUARE_COLORS.items()
}
PIXTRAL_SHAPE_COLORS: dict[str, str] = {shape: ("Orange" if c == "Brown" else c) for shape, c in SHAPE_COLORS.items()}
PIXTRAL_OBJECT_NAMES: tuple[str, ...] = tuple(name for name in OBJECT_NAMES if name != "bomb")

# Extra colours used only for scene shapes and clutter (never asked about).
SCENE_SHAPE_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (210, 30, 30),
    "green": (30, 150, 50),
    "blue": (30, 70, 200),
    "yellow": (240, 200, 20),
    "purple": (120, 50, 170),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
}

RELATION_WORDS: tuple[str, ...] = ("left", "right", "above", "below")

# Templates (the relation phrase is "to the left of" / "to the right of" / "above" / "below").
# Each ends in a space, as the authors' prompts do: the space changes which token comes next.
SQUARES_TEMPLATE = "The color of the square {relation} the {reference} square is "
SHAPES_TEMPLATE = "The color of the shape {relation} the {reference} is "
OBJECTS_TEMPLATE = "The object {relation} the {reference} is a(n) "
WHATSUP_TEMPLATE = "The object on the floor {relation} the {reference} is a(n) "

RELATION_PHRASES: dict[str, str] = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
}


def answer_variants(word: str) -> list[str]:
    """Spellings scored as one answer: space-prefixed and bare, in the canonical and the other case."""
    other = word.lower() if word[:1].isupper() else word[:1].upper() + word[1:]
    variants = [f" {word}", word, f" {other}", other]
    return list(dict.fromkeys(variants))


_WORD = re.compile(r"[A-Za-z]+")


def words_in(text: str) -> list[str]:
    """The alphabetic words of a prompt (punctuation such as '?', ':' and 'a(n)' brackets dropped)."""
    return _WORD.findall(text)


# Words of the fixed parts of all prompts (synthetic, scenes, What'sUp, COCO-spatial forced choice).
PROMPT_WORDS: tuple[str, ...] = tuple(
    """
    The the color of square to left right above below is a an n shape object on floor
    Using as reference point which side Answer with one word or Is
    chair table armchair
    """.split()
)

# Nouns the `scenes` task may name (icons plus simple shapes, lower case in prompts).
SCENE_NOUNS: tuple[str, ...] = OBJECT_NAMES + tuple(shape.lower() for shape in SHAPE_COLORS)

ANSWER_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        list(SQUARE_COLORS)
        + [color.lower() for color in SQUARE_COLORS]
        + list(SHAPE_COLORS)
        + list(OBJECT_NAMES)
        + list(RELATION_WORDS)
    )
)

# Everything a synthetic prompt or answer may contain: what the bundled tokenizer must keep whole.
ALL_WORDS: tuple[str, ...] = tuple(dict.fromkeys(PROMPT_WORDS + ANSWER_WORDS + SCENE_NOUNS))
