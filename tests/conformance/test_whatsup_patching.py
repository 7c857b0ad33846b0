"""last-token and criss-cross on What'sUp composites with the authors' hand-labelled left/right regions
(criss_cross_patching/src/regions.py WHATSUP_*_REGIONS; last_token_exp/build_cf_pairs.py's whatsup
tuples (s0, reference, s2, s3, s4), left/right only), on a tiny random Qwen2-VL at its 12x12 grid."""

from __future__ import annotations

import pytest

from spatialmech.experiments import criss_cross, last_token
from spatialmech.experiments.common import encode_items
from spatialmech.experiments.runner import load_result, run_experiment
from spatialmech.models.qwen2_vl import Adapter as Qwen2VL
from spatialmech.tasks.whatsup_data import OBJECT_REGIONS, STRIP_REGIONS

from .conftest import write_whatsup

SIDES = ("pot", "plant", "orange", "hat", "cup")  # one token (lower-case) for the tiny tokenizer


@pytest.fixture(scope="module")
def adapter():
    return Qwen2VL.tiny(tokens_per_side=12)


@pytest.fixture
def root(tmp_path):
    entries = [(side, rel, "chair") for side in SIDES for rel in ("left_of", "right_of")]
    return write_whatsup(tmp_path / "whatsup_vlms", entries)


def test_last_token_on_whatsup_draws_their_tuples(adapter, root, tmp_path):
    options = {"n": 2, "filter_correct": False, "layers": "1"}
    path = run_experiment("last-token", adapter, out_root=tmp_path / "out", task="whatsup", options=options,
                          data_root=str(root), batch_size=2, progress=False)
    metrics = load_result(path.parent)["metrics"]
    assert metrics["layers"] == ["emb", 1] and set(metrics["by_direction"]) == {"left", "right"}
    assert metrics["n_pairs"] == 4  # 2 per direction
    from spatialmech.experiments.common import get_task_for

    groups = last_token.drawn_pairs(get_task_for(adapter, "whatsup", str(root)), seed=0, limit=20)
    for direction, pairs in groups.items():
        for pair in pairs:
            entities = pair.clean.meta["pair_entities"]
            assert entities[1] == "chair" and set(entities) - {"chair"} <= set(SIDES) and len(set(entities)) == 5
            assert pair.clean.relation == direction and pair.clean.answer == entities[0]


@pytest.mark.parametrize("region", ["object", "strip"])
def test_criss_cross_on_whatsup_swaps_the_hand_labelled_boxes(adapter, root, tmp_path, region):
    from spatialmech.experiments.common import get_task_for

    task = get_task_for(adapter, "whatsup", str(root))
    pairs = [p for group in criss_cross.candidates(_ctx(region), task).values() for p in group]
    assert pairs and all(p.clean.meta["regions"]["source"].startswith("hand-labelled") for p in pairs)
    inputs = encode_items(adapter, task, [pairs[0].clean])
    first, last = criss_cross.end_regions(inputs, [pairs[0].clean], region)
    tokens = inputs.images[0][0]
    where = {int(p): (int(r), int(c)) for p, r, c in zip(tokens.positions, tokens.rows, tokens.cols)}
    table = OBJECT_REGIONS if region == "object" else STRIP_REGIONS
    for side, positions in (("left", first[0]), ("right", last[0])):
        row0, col0, row1, col1 = table[12]["chair"][side]
        assert sorted(where[int(p)] for p in positions) == [(r, c) for r in range(row0, row1) for c in range(col0, col1)]
    options = {"n": 2, "filter_correct": False, "layers": "1", "region": region}
    path = run_experiment("criss-cross", adapter, out_root=tmp_path / "out", task="whatsup", options=options,
                          data_root=str(root), batch_size=2, progress=False)
    metrics = load_result(path.parent)["metrics"]
    assert metrics["region"] == region and metrics["n_pairs"] == 2 and metrics["layers"] == ["emb", 1]


def _ctx(region):
    class Ctx:
        config = {"region": region}
        seed = 0

    return Ctx()


def test_probe_on_whatsup_uses_their_images_boxes_and_split(adapter, root, tmp_path):
    """probing/src/whatsup.py: their (left, ref, right) tuples in their seed-42 order, split in order
    (first int(0.75 n) train), object tokens from their boxes; `--protocol strict` keeps our seeded split."""
    from spatialmech.engine import ActivationStore
    from spatialmech.experiments.common import get_task_for

    path = run_experiment("probe", adapter, out_root=tmp_path / "out", task="whatsup", data_root=str(root),
                          batch_size=4, progress=False, options={})
    metrics = load_result(path.parent)["metrics"]
    assert (metrics["n_train"], metrics["n_test"]) == ({"horizontal": 15}, {"horizontal": 5})  # 5P2 = 20 images
    assert "vertical" in metrics["axes_skipped"]
    store = ActivationStore(path.parent / "units" / "features-horizontal")
    expected = get_task_for(adapter, "whatsup", str(root)).probe_items()
    assert store.num_items == len(expected) == 20
    panels = load_result(path.parent)["data"]["heatmaps"]["horizontal"]  # the first test images: theirs 16-18
    assert [p["title"] for p in panels] == [" | ".join(o.name for o in item.objects) for item in expected[15:18]]
    strict = run_experiment("probe", adapter, out_root=tmp_path / "strict", task="whatsup", data_root=str(root),
                            batch_size=4, progress=False, options={"protocol": "strict"})
    assert load_result(strict.parent)["metrics"]["n_test"] == {"horizontal": 5}
