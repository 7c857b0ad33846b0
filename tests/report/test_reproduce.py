"""`spatialmech reproduce` end to end on a tiny Qwen2-VL: every experiment, report, resume, failures."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from report_helpers import TINY_OPTIONS, TINY_SIZES, reproduce_args

from spatialmech.catalog import EXPERIMENT_MODULES
from spatialmech.errors import EXIT_INTERNAL, UserInputError
from spatialmech.io import read_json, write_json
from spatialmech.pipeline.reproduce import ReproduceFailed, reproduce
from spatialmech.pipeline.steps import available_data_tasks, build_plan
from spatialmech.report.html import build_report
from spatialmech.tasks import QWEN

FIXTURE_DATA = Path(__file__).resolve().parents[1] / "fixtures" / "whatsup"


def _copy_run(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def _steps(run: Path) -> dict[str, dict]:
    return {step["folder"]: step for step in read_json(run / "reproduce.json")["steps"]}


def test_quick_run_has_every_experiment_with_figures_in_the_report(quick_run: Path) -> None:
    steps = _steps(quick_run)
    plan = build_plan(quick=True)
    assert list(steps) == [s.folder for s in plan]
    assert {s["experiment"] for s in steps.values()} == set(EXPERIMENT_MODULES)  # every experiment of SPEC section 4
    assert all(s["status"] == "done" for s in steps.values()), {k: s["error"] for k, s in steps.items() if s["status"] != "done"}
    assert {"criss-cross", "criss-cross-strip"} <= set(steps)
    html = (quick_run / "report.html").read_text(encoding="utf-8")
    assert f"Complete: all {len(plan)} steps finished" in html
    for folder, step in steps.items():
        result = read_json(quick_run / folder / "result.json")
        assert result["experiment"] == step["experiment"] and result["task"] == step["task"]
        assert f"id='{folder}'" in html
        if step["experiment"] != "behavior":
            pngs = [name for name in result["figures"] if name.endswith(".png")]
            assert pngs, f"{folder} wrote no figure"
            for name in pngs:  # inlined byte for byte
                assert base64.b64encode((quick_run / folder / name).read_bytes()).decode() in html
    assert (quick_run / "report_figures" / "behavior_accuracy.png").is_file()
    criss = read_json(quick_run / "criss-cross" / "result.json")["config"]["region"]
    strip = read_json(quick_run / "criss-cross-strip" / "result.json")["config"]["region"]
    assert (criss, strip) == ("object", "strip")


def test_quick_run_announces_its_time_and_progress(quick_run: Path) -> None:
    log = (quick_run / "log.txt").read_text(encoding="utf-8")
    assert "estimated time: ~" in log
    total = len(build_plan(quick=True))
    for k in range(1, total + 1):
        assert f"[{k}/{total}]" in log
    manifest = read_json(quick_run / "reproduce.json")
    assert manifest["seconds_per_forward"] > 0 and manifest["seconds"] > 0
    assert all(step["estimated_seconds"] > 0 and step["seconds"] > 0 for step in manifest["steps"])


def test_resume_reuses_finished_steps_and_reruns_changed_ones(quick_run: Path, tmp_path: Path, tiny_model_dir: Path, loaded_tiny) -> None:
    run = _copy_run(quick_run, tmp_path)
    before = {p.parent.name: p.read_bytes() for p in run.glob("*/result.json")}
    sizes = {**TINY_SIZES, "behavior": 3}  # behavior's config changes: those steps start again, fresh
    reproduce(reproduce_args(tiny_model_dir, run, resume=True), sizes=sizes, extra_options=TINY_OPTIONS,
              adapter=loaded_tiny, progress=False, log=lambda _: None)
    steps = _steps(run)
    for folder, step in steps.items():
        if step["experiment"] == "behavior":
            assert step["status"] == "done"
            assert read_json(run / folder / "result.json")["metrics"]["n"] == 3
        else:
            assert step["status"] == "reused", folder
            assert (run / folder / "result.json").read_bytes() == before[folder]


def test_resume_refuses_a_different_kind_of_run(quick_run: Path, tmp_path: Path, tiny_model_dir: Path, loaded_tiny) -> None:
    run = _copy_run(quick_run, tmp_path)
    with pytest.raises(UserInputError, match="--quick"):
        reproduce(reproduce_args(tiny_model_dir, run, resume=True, quick=False), adapter=loaded_tiny, progress=False, log=lambda _: None)


def test_a_failed_step_is_marked_missing_and_the_command_fails(quick_run: Path, tmp_path: Path, tiny_model_dir: Path, loaded_tiny) -> None:
    run = _copy_run(quick_run, tmp_path)
    shutil.rmtree(run / "criss-cross-strip")
    (run / "criss-cross-strip").write_text("a file where the step's folder should be", encoding="utf-8")
    with pytest.raises(ReproduceFailed, match="criss-cross-strip") as caught:
        reproduce(reproduce_args(tiny_model_dir, run, resume=True), sizes=TINY_SIZES, extra_options=TINY_OPTIONS,
                  adapter=loaded_tiny, progress=False, log=lambda _: None)
    assert caught.value.exit_code == EXIT_INTERNAL
    assert "report.html" in str(caught.value)
    steps = _steps(run)
    assert steps["criss-cross-strip"]["status"] == "failed" and steps["criss-cross-strip"]["error"]
    assert all(s["status"] == "reused" for f, s in steps.items() if f != "criss-cross-strip")
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "INCOMPLETE: 1 of" in html and "MISSING: criss-cross-strip (failed)" in html
    assert "data-src='criss-cross-strip'" not in html
    assert "Complete: all" not in html


def test_interrupted_and_unrun_steps_are_marked(quick_run: Path, tmp_path: Path) -> None:
    run = _copy_run(quick_run, tmp_path)
    manifest = read_json(run / "reproduce.json")
    manifest["steps"][-2]["status"] = "running"
    manifest["steps"][-1]["status"] = "pending"
    for step in manifest["steps"][-2:]:
        (run / step["folder"] / "result.json").unlink()
    write_json(run / "reproduce.json", manifest)
    html = build_report(run).read_text(encoding="utf-8")
    assert f"MISSING: {manifest['steps'][-2]['folder']} (interrupted)" in html
    assert f"MISSING: {manifest['steps'][-1]['folder']} (not run)" in html
    assert "INCOMPLETE: 2 of" in html


def test_data_root_adds_the_real_data_steps() -> None:
    found, missing = available_data_tasks(str(FIXTURE_DATA), QWEN)
    assert found == ["whatsup", "coco-spatial"] and missing == {}
    folders = [s.folder for s in build_plan(quick=True, data_tasks=found)]
    assert {"behavior-whatsup", "behavior-coco-spatial", "probe-whatsup", "amplify-coco-spatial"} <= set(folders)


def test_bad_data_root_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="is not a folder"):
        available_data_tasks(str(tmp_path / "nope"), QWEN)
    with pytest.raises(UserInputError, match="neither What'sUp nor COCO-spatial"):
        available_data_tasks(str(tmp_path), QWEN)


def test_full_plan_uses_the_paper_sizes() -> None:
    for step in build_plan(quick=False):
        assert step.options["n"] is None  # None = each experiment's paper default
    assert json.dumps([s.options for s in build_plan(quick=True)])  # plain JSON options


def test_time_estimate_grows_with_the_work() -> None:
    from spatialmech.pipeline.estimates import TaskFacts, estimate_forwards

    squares, scenes = TaskFacts(480), TaskFacts(500, forced_choice=True, unbounded=True)
    assert estimate_forwards("behavior", {"n": None}, 8, scenes) == 1000  # strict: two orders per item
    assert estimate_forwards("behavior", {"n": 48}, 8, squares) == 48
    for experiment in ("last-token", "criss-cross", "backup"):
        small = estimate_forwards(experiment, {"n": 8, "layers": list(range(8))}, 8, squares)
        assert small < estimate_forwards(experiment, {"n": 50, "layers": list(range(8))}, 8, squares)
        assert small < estimate_forwards(experiment, {"n": 8, "layers": list(range(28))}, 28, squares)
    assert estimate_forwards("amplify", {"n": None, "alphas": list(range(16))}, 8, scenes) == 300 * (1 + 4 + 4 * 15)


def test_an_interrupted_rerun_never_shows_the_old_results(quick_run: Path, tmp_path: Path, tiny_model_dir: Path, loaded_tiny) -> None:
    """A new run (no --resume) over an old one, stopped by Ctrl-C after its first step: the report shows
    that one step and marks the rest missing; none of the old run's numbers remain."""
    run = _copy_run(quick_run, tmp_path)

    def interrupt_at_second_step(message: str) -> None:
        if message.startswith("[2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reproduce(reproduce_args(tiny_model_dir, run), sizes=TINY_SIZES, extra_options=TINY_OPTIONS,
                  adapter=loaded_tiny, progress=False, log=interrupt_at_second_step)
    finished = [p.parent.name for p in run.glob("*/result.json")]
    assert finished == ["behavior-squares"]
    html = (run / "report.html").read_text(encoding="utf-8")
    total = len(build_plan(quick=True))
    assert f"INCOMPLETE: {total - 1} of {total}" in html
    assert "data-src='amplify'" not in html and "MISSING: amplify (not run)" in html


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from spatialmech.cli import main

    assert main(["reproduce", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "out")]) == 2
    assert main(["reproduce", "--batch-size", "0", "--out", str(tmp_path / "out")]) == 2
    assert main(["reproduce", "--data", str(tmp_path / "no-data"), "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "o")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("spatialmech reproduce:")]
    assert len(errors) == 3 and all(line.startswith("spatialmech reproduce: error:") for line in errors)
    assert "--data" in errors[2]  # checked before any model is loaded
    assert not (tmp_path / "out" / "report.html").exists()


def test_resume_continues_a_step_from_its_saved_units(quick_run: Path, tmp_path: Path, tiny_model_dir: Path, loaded_tiny) -> None:
    """A step killed after its units were saved but before result.json: --resume finishes it from the
    units, with the same numbers as the uninterrupted run."""
    run = _copy_run(quick_run, tmp_path)
    before = read_json(run / "amplify" / "result.json")
    (run / "amplify" / "result.json").unlink()
    assert any((run / "amplify" / "units").iterdir())
    reproduce(reproduce_args(tiny_model_dir, run, resume=True), sizes=TINY_SIZES, extra_options=TINY_OPTIONS,
              adapter=loaded_tiny, progress=False, log=lambda _: None)
    steps = _steps(run)
    assert steps["amplify"]["status"] == "done"
    assert all(s["status"] == "reused" for f, s in steps.items() if f != "amplify")
    after = read_json(run / "amplify" / "result.json")
    assert after["metrics"] == before["metrics"] and after["config"] == before["config"]


def test_protocol_both_plans_each_amplification_side_by_side():
    paper_plan = build_plan(quick=True)
    assert {s.options["protocol"] for s in paper_plan} == {"paper"}
    assert {s.options["protocol"] for s in build_plan(quick=True, protocol="strict")} == {"strict"}
    both = build_plan(quick=True, data_tasks=["coco-spatial"], protocol="both")
    strict = {s.folder: s for s in both if s.options["protocol"] == "strict"}
    assert set(strict) == {"amplify-strict", "amplify-coco-spatial-strict"}
    assert all(s.experiment == "amplify" for s in strict.values())
    assert len(both) == len(build_plan(quick=True, data_tasks=["coco-spatial"])) + 2
