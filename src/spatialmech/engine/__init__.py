"""The intervention engine: the only place that hooks modules. Experiments use this, never torch hooks.

Everything speaks SPEC's site names (`vision.out`, `projector.out`, `lm.resid_pre.{l}`,
`lm.resid_post.{l}`, `lm.attn.{l}`, `lm.mlp.{l}`, resolved by the adapter's `hook_point`) and **LM
positions**: per batch row, a 1-D LongTensor of sequence indices (after left padding). For image-token
sites the engine maps LM positions to the site's rows itself (`vision.out` gives `rows_per_lm_token`
rows per position). Helpers: `last_position(inputs)`, `image_positions(inputs)`,
`positions_in_boxes(inputs, boxes)`, and `ImageTokens.positions_in_box` / `cell_positions`.

    from spatialmech.engine import Engine, Patch, Ablate, Steer, amplify_projection, image_positions
    engine = Engine(adapter)
    inputs = adapter.build_inputs(images, prompts, system)

Run and record
    engine.logits(inputs, interventions=[...])            -> (batch, vocab) last-position logits
    engine.answer_probabilities(inputs, answers, [...])   -> (batch, k), summed over spelling variants
    acts = engine.cache(inputs, ["projector.out", "lm.resid_post.3"], image_positions(inputs))
    acts["projector.out"][row]                           -> (n_positions, hidden); acts.positions(site)
    engine.run(inputs, interventions, record={site: positions}) -> RunOutput(logits, activations)
    engine.cache_to_disk(batch_iterable, sites, folder, positions=fn)  -> ActivationStore (safetensors
        shards + index.json, streamed: memory stays at one shard whatever the item count)
    engine.generate(inputs, interventions, max_new_tokens)  (interventions act on the prompt pass only)

Interventions (a list, applied in order per site, on the prompt/prefill pass only)
    Patch(site, positions, values)            values[row]: (n, hidden) e.g. from another run's cache.
        Region A of run 2 -> region B of run 1: Patch(site, B_positions_run1, cache_of_run2_at_A[...]).
        A swap of regions A<->B inside the target: positions = cat(A, B), values from the source at cat(B, A).
    Ablate(site, positions, mode="values"|"mean"|"zero", values=...)   other input's values / mean / zeros.
    Steer(site, positions, fn)                values <- fn(values), with
        amplify_projection(W, alpha)          SPEC's ordering amplification h += alpha * (hW/|W_col|^2) W^T
        add_direction(v, alpha)               h += alpha * v

Sweeps (the paper's hot path)
    res = engine.patch_sweep(target, source, target_positions, source_positions=None,
                             site="lm.resid_pre.{l}", layers=None, answers=tracked,
                             target_interventions=[...], source_interventions=[...])
    res.probabilities: (n_layers, batch, n_answers); res.logits if keep_logits; res.clean_logits,
    res.source_logits (unpatched runs, to keep pairs the model gets right on both); res.method.
    Pairs are rows of the two batches (build the batches with the same number of rows; call once per
    batch). The engine runs the source once, the target once, then only layers >= l per layer l,
    stacked along the batch; a last-token-only patch recomputes one token per layer against the clean
    run's KV cache. Equal to the naive loop (`method="naive"`) to 1e-5 in float32 (tested).
    Target interventions must act at or before the first swept layer's input (e.g. layer-0 ablations);
    otherwise the sweep falls back to the naive loop (correct, slower).

Scoring (`engine.scoring`): answer probabilities summed over spelling variants, top-1, strict, IIA.
"""

from spatialmech.engine.activations import Activations, ActivationStore, ActivationWriter, SiteValues
from spatialmech.engine.core import Engine, RunOutput
from spatialmech.engine.hooks import HookSession
from spatialmech.engine.interventions import (
    Ablate,
    Intervention,
    Patch,
    Steer,
    add_direction,
    amplify_projection,
)
from spatialmech.engine.positions import (
    ImageRowMap,
    as_positions,
    image_positions,
    last_position,
    positions_in_boxes,
)
from spatialmech.engine.sweep import SweepResult, layer_site

__all__ = [
    "Ablate",
    "ActivationStore",
    "ActivationWriter",
    "Activations",
    "Engine",
    "HookSession",
    "ImageRowMap",
    "Intervention",
    "Patch",
    "RunOutput",
    "SiteValues",
    "Steer",
    "SweepResult",
    "add_direction",
    "amplify_projection",
    "as_positions",
    "image_positions",
    "last_position",
    "layer_site",
    "positions_in_boxes",
]
