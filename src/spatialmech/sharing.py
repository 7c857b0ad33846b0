"""The switch for everything that reuses work instead of repeating it (issue 21), and picture keys.

Prefix sharing (`engine.prefix`), the picture memo (`engine.encodings`), the logits memo
(`engine.logits_memo`) and preprocessing each distinct picture of a batch once (`models._hf_common`)
give the same numbers as running everything afresh; `SPATIALMECH_PREFIX_SHARING=0` turns them all off
(the benchmark's "before" side and the equality checks). It sits below every layer so that the models
layer can read it too.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

ENV_SWITCH = "SPATIALMECH_PREFIX_SHARING"


def sharing_default() -> bool:
    """On unless SPATIALMECH_PREFIX_SHARING is 0/off/false/no."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "off", "false", "no")


def image_digest(image: Any) -> str:
    """A key for an image's pixels (equal pictures drawn twice, or opened twice, get one key)."""
    digest = hashlib.sha1(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()
