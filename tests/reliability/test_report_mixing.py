"""Results record the hashes of their inputs, and `spatialmech report` refuses to mix results from
different models or different data (results copied into one run folder, as people do)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from reliability_helpers import assert_bad_input, run_cli

from spatialmech.models.registry import adapter_class

COCO_QA_JSON = Path("data/coco_qa_two_obj.json")


def coco_eval(model: Path, data: Path, out: Path, capsys) -> Path:
    result = run_cli(["eval", "--model", model, "--task", "coco-spatial", "--data", data, "--out", out], capsys)
    assert result.code == 0, result.err
    return out / "behavior"


def squares_eval(model: Path, out: Path, capsys) -> Path:
    result = run_cli(["eval", "--model", model, "--task", "squares", "--n", 2, "--out", out], capsys)
    assert result.code == 0, result.err
    return out / "behavior"


def add_to_run(run: Path, folder: Path, name: str) -> None:
    shutil.copytree(folder, run / name)


def test_results_record_input_hashes(tiny_model, data, tmp_path, capsys):
    result = json.loads((coco_eval(tiny_model, data, tmp_path / "run", capsys) / "result.json").read_text())
    assert len(result["model_fingerprint"]["sha256"]) == 64
    assert result["model_fingerprint"]["family"] == "qwen2-vl"
    files = result["inputs"]["files"]
    assert {"coco_qa_two_obj.json", "annotations/instances_val2017.json"} <= set(files)
    assert all(len(digest) == 64 for digest in files.values())


def test_same_model_and_data_report_fine(tiny_model, data, tmp_path, capsys):
    run = tmp_path / "run"
    coco_eval(tiny_model, data, run, capsys)
    add_to_run(run, squares_eval(tiny_model, tmp_path / "other", capsys), "behavior-squares")
    result = run_cli(["report", run], capsys)
    assert result.code == 0, result.err
    assert (run / "report.html").is_file()


def test_report_refuses_different_models(tiny_model, tmp_path, capsys):
    other_model = tmp_path / "other-model"
    adapter_class("qwen2-vl").tiny(1).save_pretrained(str(other_model))
    run = tmp_path / "run"
    squares_eval(tiny_model, run, capsys)
    add_to_run(run, squares_eval(other_model, tmp_path / "other", capsys), "behavior-other-model")
    assert_bad_input(run_cli(["report", run], capsys), "different models", "behavior-other-model")
    assert not (run / "report.html").exists()


def test_report_refuses_same_weights_with_another_chat_template(model_copy, tiny_model, tmp_path, capsys):
    """Same safetensors, different prompt format: different results, so a different model."""
    template = model_copy / "chat_template.jinja"
    template.write_text(template.read_text().replace("You are a helpful assistant.", "You are a careless assistant."))
    run = tmp_path / "run"
    squares_eval(tiny_model, run, capsys)
    add_to_run(run, squares_eval(model_copy, tmp_path / "other", capsys), "behavior-other-template")
    assert_bad_input(run_cli(["report", run], capsys), "different models")


def test_report_refuses_different_data(tiny_model, data, tmp_path, capsys):
    """The What'sUp repository layout keeps its JSON under data/: those files must be hashed too."""
    run = tmp_path / "run"
    coco_eval(tiny_model, data, run, capsys)
    other_data = Path(shutil.copytree(data, tmp_path / "other-data"))
    questions = json.loads((other_data / COCO_QA_JSON).read_text())
    (other_data / COCO_QA_JSON).write_text(json.dumps(questions[:3]))
    add_to_run(run, coco_eval(tiny_model, other_data, tmp_path / "other", capsys), "behavior-other-data")
    assert_bad_input(run_cli(["report", run], capsys), "different versions of coco_qa_two_obj.json")
    assert not (run / "report.html").exists()


def test_report_on_a_folder_without_results(tmp_path, capsys):
    assert_bad_input(run_cli(["report", tmp_path / "missing"], capsys), "does not exist")
    (tmp_path / "empty" / "behavior" / "units").mkdir(parents=True)  # an interrupted run: units, no result
    assert_bad_input(run_cli(["report", tmp_path / "empty"], capsys), "no finished experiment results")
    assert not (tmp_path / "empty" / "report.html").exists()
