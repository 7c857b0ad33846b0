"""Qwen2.5-VL: Qwen2-VL's layout (14 px patches, 2x2 merger, M-RoPE, same chat template and image
processor) with a windowed-attention vision tower.

The trap: the vision tower permutes merge groups into attention windows before its blocks, and the
merger runs in that window order; only *after* the merger does the model un-permute to raster order
(`merged[argsort(window_index)]`). So the rows of the modules behind `vision.out` (merger input) and
`projector.out` (merger output) are NOT in LM order. We keep the hook on the merger (the module that
is the projector) and give the permutation in `BatchInputs.row_order`, computed from the same
`image_grid_thw` with the model's own window function: `value[row_order[site]]` is in LM order.
"""

from __future__ import annotations

from typing import Any

import torch

from spatialmech.models import qwen2_vl


class Adapter(qwen2_vl.Adapter):
    family = "qwen2.5-vl"
    model_types = ("qwen2_5_vl",)
    description = "Qwen2.5-VL (Qwen2-VL layout, windowed-attention ViT; rows un-permuted via row_order)"
    default_dtype = None  # not a paper model: the checkpoint's own dtype

    hf_model = "transformers:Qwen2_5_VLForConditionalGeneration"
    hf_config = "transformers:Qwen2_5_VLConfig"

    @classmethod
    def _tiny_vision_config(cls, hidden_size: int, vision_depth: int, vision_width: int) -> dict[str, Any]:
        return {
            "depth": vision_depth,
            "hidden_size": vision_width,
            "intermediate_size": 2 * vision_width,
            "out_hidden_size": hidden_size,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,  # 4x4 LM tokens per window, as in the real model
            "fullatt_block_indexes": [vision_depth - 1],  # earlier blocks windowed, last one global
        }

    @classmethod
    def tiny(cls, seed: int = 0, *, vision_depth: int = 2, **sizes: Any) -> Adapter:
        """As Qwen2-VL's tiny, with two vision blocks so both windowed and global attention run."""
        return super().tiny(seed, vision_depth=vision_depth, **sizes)

    def _row_order(self, model_kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        grid_thw = model_kwargs.get("image_grid_thw")
        if grid_thw is None:
            return {}
        from transformers.vision_utils import get_vision_window_index

        vision = self.model.config.vision_config
        window_index, _ = get_vision_window_index(
            grid_thw,
            spatial_merge_size=vision.spatial_merge_size,
            window_size=vision.window_size,
            patch_size=vision.patch_size,
        )
        # merger row i (window order) holds LM token window_index[i]; LM token k sits at row to_lm[k].
        to_lm = torch.argsort(window_index)
        group = self.merge_size**2
        vision_rows = (to_lm[:, None] * group + torch.arange(group)).flatten()
        return {"projector.out": to_lm, "vision.out": vision_rows}
