"""The intervention engine: the only place that hooks modules. Experiments use this, never torch hooks.

Everything speaks SPEC's site names (`vision.out`, `projector.out`, `lm.resid_pre.{l}`,
`lm.resid_post.{l}`, `lm.attn.{l}`, `lm.mlp.{l}`, resolved by the adapter's `hook_point`) and **LM
positions**: per batch row, a 1-D LongTensor of sequence indices (after left padding). For image-token
sites the engine maps LM positions to the site's rows itself (`vision.out` gives `rows_per_lm_token`
rows per position). Helpers: `last_position(inputs)`, `image_positions(inputs)`,
`positions_in_boxes(inputs, boxes)`, and `ImageTokens.positions_in_box` / `cell_positions`; which
tokens make up an object's box or strip: `engine.regions` (the one token-region API).

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
    e.g. SPEC's ablate-vision, objects <- the object alone at the centre, background <- a blank image:
        alone = engine.cache(alone_inputs, "projector.out", centre_positions)["projector.out"]
        blank = engine.cache(blank_inputs, "projector.out", background_positions)["projector.out"]
        engine.logits(inputs, [Ablate("projector.out", object_positions, "values", alone),
                               Ablate("projector.out", background_positions, "values", blank)])
    and amplification: [Steer("lm.resid_pre.0", image_positions(inputs), amplify_projection(W, alpha))].
    `engine.hooks(inputs, interventions, record)` is the same as a context manager around any forward.

Sweeps (the paper's hot path)
    res = engine.patch_sweep(target, source, target_positions, source_positions=None,
                             site="lm.resid_pre.{l}", layers=None, answers=tracked,
                             target_interventions=[...], source_interventions=[...])
    res.probabilities: (n_layers, batch, n_answers); res.logits if keep_logits; res.clean_logits,
    res.source_logits (unpatched runs, to keep pairs the model gets right on both); res.method.
    Pairs are rows of the two batches (build the batches with the same number of rows; call once per
    batch). How it is fast, all exact: the source runs once (recording every layer at the source
    positions) and the target once (keeping each layer's input, call arguments and KV cache); then for
    each layer l only layers >= l run, stacked along the batch for all l, and only for the positions
    from the first patched one on (earlier ones equal the clean run when the model's own masks show
    they cannot see later ones; a last-token patch is one token per layer); the last layer computes
    only the last position. `res.method` says which path ran: "suffix" (prefix reused), "resume"
    (whole sequences, e.g. Gemma patches inside its bidirectional image block) or "naive". Equal to the
    naive loop (`method="naive"`: one patched forward per layer) to 1e-5 in float32 (tested).
    Target interventions must act at or before the first swept layer's input (e.g. layer-0 ablations);
    otherwise the sweep falls back to the naive loop (correct, slower). Memory: `max_tokens_per_call`
    bounds the rows x positions per decoder-layer call.

Prefix sharing (`engine.prefix`, on by default)
    engine.logits / answer_probabilities / run without recordings: rows whose inputs begin alike (both
    option orders of an item, every question about one picture) run their common prefix once and the
    suffixes against its keys/values; exact (equal to the plain forward to float32 rounding, tested on
    every family), also under interventions that act before layer 0 (steering / ablation / patching of
    picture tokens at projector.out or lm.resid_pre.0). Batch a picture's questions together to use it.
    Families whose masks forbid it (PaliGemma's prefix-LM) and later-layer interventions run plain;
    `engine.prefix_stats` counts shared forwards, token passes and why it fell back. Recording encoder
    sites only (`engine.cache(inputs, "projector.out", ...)`) stops before the LM's layers.
    Off: `Engine(adapter, share_prefix=False)` or SPATIALMECH_PREFIX_SHARING=0.

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
