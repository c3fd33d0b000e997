"""`scripts/evaluate.py` end to end on its `--quick` settings (report shape, resume, plot, model card), the model card
table writer, and the optional `probe` / `joint` stages and `L_phys` of `scripts/train.py`."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from test_training_resume import run_train_here, write_tiny_preset

from modeling_veltrix.evaluation.suite import CARD_END, CARD_START, MODELS, write_table_into_card

REPO = Path(__file__).resolve().parent.parent
WORLDS = ("bouncing_balls", "pendulum", "mass_spring", "two_body")


def run_evaluate(output: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(output.parent / "datasets")}
    command = [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--output", str(output), "--quick", *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    output = tmp_path_factory.mktemp("evaluate") / "report.json"
    result = run_evaluate(output)
    assert result.returncode == 0, result.stderr[-3000:]
    return output, json.loads(output.read_text()), result


def test_quick_run_reports_every_world_and_model(quick_run):
    output, report, _ = quick_run
    assert {"torch", "device", "threads", "kernel_path"} <= set(report["environment"])
    results = report["results"]
    names = [target["name"] for target in report["targets"]]
    per_world = [
        [f"error_ratio_veltrix_over_{b}_10x_{w}" for b in ("transformer", "gru")]
        + [f"object_persistence_10x_{w}", f"sharpness_ratio_10x_{w}", f"best_of_8_error_ratio_10x_{w}"]
        for w in WORLDS
    ]
    assert names == [name for world in per_world for name in world] + ["future_event_recall_speaking"]
    speaking = results["speaking"]
    assert speaking["sampled"]["num_samples"] == 8 and speaking["deterministic"]["num_samples"] is None
    for kind in ("deterministic", "sampled"):
        recall = speaking[kind]["caption_event_accuracy_on_event_steps"]
        assert results[f"future_event_recall_speaking_{kind}"] == recall
    assert report["targets"][-1]["value"] == results["future_event_recall_speaking_sampled"]
    for world in WORLDS:
        scores = results["worlds"][world]
        parameters = scores["parameters"]
        mean_predictor = scores["parameters_veltrix_mean_predictor"]
        assert 0 < mean_predictor < parameters["veltrix"]  # the tiny preset's evolver has a sampling head
        for baseline in ("transformer", "gru"):  # equal size: within ±10 % of the evolver's mean predictor
            assert abs(parameters[baseline] - mean_predictor) <= 0.1 * mean_predictor
        horizon = scores["horizon"]
        assert horizon == 10 * scores["training_window"]
        for model in MODELS:
            assert f"vpt_{model}_{world}" in results and f"energy_drift_{model}_{world}" in results
            model_scores = scores["models"][model]
            assert len(model_scores["pixel_mse_readout"]) == len(model_scores["psnr_per_horizon_readout"]) == horizon
            assert model_scores["pixel_mse_readout_10x"] == model_scores["pixel_mse_readout"][-1]
        ratio = scores["models"]["veltrix"]["pixel_mse_readout_10x"] / scores["models"]["gru"]["pixel_mse_readout_10x"]
        target = next(t for t in report["targets"] if t["name"] == f"error_ratio_veltrix_over_gru_10x_{world}")
        assert target["value"] == pytest.approx(ratio)
    assert Path(results["plot"]).is_file()
    card = (output.parent / "report_runs" / "model_card.md").read_text()
    assert CARD_START in card and "| mass_spring | gru |" in card


def test_rerun_resumes_and_reproduces(quick_run, monkeypatch, capsys):
    """In this process (no import cost): the rerun loads every world's scores and reproduces the targets."""
    output, report, _ = quick_run
    again = output.parent / "again.json"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(output.parent / "datasets"))
    argv = ["evaluate.py", "--output", str(again), "--quick", "--output-dir", str(output.parent / "report_runs")]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(REPO / "scripts" / "evaluate.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert printed.count("scores loaded") == len(WORLDS)
    assert "training" not in printed.replace("training window", "")
    assert json.loads(again.read_text())["targets"] == report["targets"]


def test_recipe_overrides_are_checked(tmp_path, monkeypatch):
    """In this process (no import cost): a bad `--set` stops the script before anything runs."""
    for item, match in (("physics_loss_weight=-1", "physics_loss_weight"), ("nonsense", "FIELD=VALUE")):
        argv = ["evaluate.py", "--output", str(tmp_path / "r.json"), "--quick", "--set", item]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(ValueError, match=match):
            runpy.run_path(str(REPO / "scripts" / "evaluate.py"), run_name="__main__")
    assert not any(tmp_path.iterdir())


def test_table_replaces_its_section_of_the_card(tmp_path):
    card = tmp_path / "card.md"
    card.write_text("# Card\n\nintro\n")
    write_table_into_card(str(card), "| a |\n| --- |", "first")
    write_table_into_card(str(card), "| b |\n| --- |", "second")
    text = card.read_text()
    assert text.count(CARD_START) == text.count(CARD_END) == 1
    assert "second" in text and "| b |" in text and "| a |" not in text and text.startswith("# Card\n\nintro\n")


def test_train_script_probe_joint_and_physics_term(tmp_path, monkeypatch):
    preset = write_tiny_preset(tmp_path / "preset", physics_loss_weight=0.5)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="needs a trained encoder"):
        run_train_here(monkeypatch, preset, out, "--stage", "probe")
    run_train_here(monkeypatch, preset, out, "--stage", "encoder")
    run_train_here(monkeypatch, preset, out, "--stage", "evolver")  # L_phys: the probe is trained first
    assert (out / "probe" / "model.safetensors").is_file() and (out / "evolver" / "model.safetensors").is_file()
    run_train_here(monkeypatch, preset, out, "--stage", "joint")
    assert (out / "joint" / "encoder" / "model.safetensors").is_file()
    assert (out / "joint" / "evolver" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"worlds": ("fluid",)}, "worlds"),
        ({"worlds": ()}, "worlds"),
        ({"speaking_preset": "p"}, "speaking_recipe"),
        ({"speaking_recipe": "a recipe"}, "speaking_recipe"),
        ({"horizon_multiple": 5}, "horizon_multiple"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"horizon_window": 0}, "horizon_window"),
    ],
)
def test_suite_settings_are_checked(overrides, match):
    from modeling_veltrix.evaluation.suite import SuiteSettings
    from modeling_veltrix.training import VeltrixTrainingRecipe

    with pytest.raises(ValueError, match=match):
        SuiteSettings(preset=str(REPO / "configuration" / "veltrix-tiny"), recipe=VeltrixTrainingRecipe(), **overrides)
    settings = SuiteSettings(preset="p", recipe=VeltrixTrainingRecipe(rollout_window=4), horizon_window=8)
    assert settings.horizon == 80
    recipe = VeltrixTrainingRecipe()
    alone = SuiteSettings(preset="p", recipe=recipe, worlds=(), speaking_preset="s", speaking_recipe=recipe)
    assert alone.worlds == ()  # the speaking preset's event recall alone
