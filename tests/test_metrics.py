"""The rollout metrics as local `evaluate` modules: loaded offline from the package, checked against numbers worked out
by hand on tiny trajectories, and against bad inputs."""

import ast
import importlib.resources
import json
import math
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from modeling_veltrix.evaluation.metric_loading import (
    METRIC_MODULES_DIR,
    METRIC_NAMES,
    SHARED_MODULE,
    load_metric,
    metric_path,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test here runs with sockets refused: the metrics must load from the package alone."""

    def refuse(*args, **kwargs):
        raise OSError("network access in a metrics test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def metric(name):
    # In memory: no cache file shared with another process computing the same metric.
    return load_metric(name, keep_in_memory=True)


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_loads_offline_as_evaluate_module(name):
    module = metric(name)
    assert module.name == name
    assert set(module.features) == {"predictions", "references"}


def test_unknown_name_raises_with_known_names():
    with pytest.raises(ValueError, match=r"'rollout_eror'.*rollout_error.*energy_drift"):
        load_metric("rollout_eror")


def test_scripts_and_cards_are_package_data():
    """One folder of plain data (no `__init__.py`), declared in setup.py's package_data: a script and a card per metric
    and the shared `trajectory_inputs.py`, the scripts' only relative import (which `evaluate` copies along)."""
    setup_tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    call = next(
        node
        for node in ast.walk(setup_tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup"
    )
    package_data = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "package_data"))
    patterns = package_data["modeling_veltrix.evaluation"]
    package_dir = importlib.resources.files("modeling_veltrix.evaluation")
    assert Path(str(package_dir)) / "metric_modules" == METRIC_MODULES_DIR
    declared = {path.relative_to(Path(str(package_dir))) for p in patterns for path in Path(str(package_dir)).glob(p)}
    folder = package_dir / "metric_modules"
    assert not (folder / "__init__.py").is_file()
    assert (folder / f"{SHARED_MODULE}.py").is_file() and Path("metric_modules", f"{SHARED_MODULE}.py") in declared
    shared_source = (folder / f"{SHARED_MODULE}.py").read_text()
    assert "modeling_veltrix" not in "".join(line for line in shared_source.splitlines() if "import" in line)
    # evaluate copies a script's direct relative imports only, not theirs:
    assert not [line for line in shared_source.splitlines() if line.startswith(("from .", "import ."))]
    for name in METRIC_NAMES:
        assert metric_path(name) == METRIC_MODULES_DIR / f"{name}.py"
        assert (folder / f"{name}.py").is_file() and (folder / f"{name}.md").is_file()
        assert {Path("metric_modules", f"{name}.py"), Path("metric_modules", f"{name}.md")} <= declared
        source = (folder / f"{name}.py").read_text()
        assert "modeling_veltrix" not in "".join(line for line in source.splitlines() if "import" in line)
        relative = [line for line in source.splitlines() if line.startswith(("from .", "import ."))]
        assert len(relative) == 1 and relative[0].startswith(f"from .{SHARED_MODULE} import ")


def test_rollout_error_by_hand():
    # Trajectory A vs zeros: per-step MSE [1, 2, 9]; trajectory B: [1, 1, 0].
    predictions = [[[1, 1], [0, 2], [3, 3]], [[0, 0], [1, 1], [0, 0]]]
    references = [[[0, 0], [0, 0], [0, 0]], [[1, 1], [0, 0], [0, 0]]]
    result = metric("rollout_error").compute(predictions=predictions, references=references, horizons=[1, 3])
    assert result["mse_per_horizon"] == pytest.approx([1.0, 1.5, 4.5])
    assert result["mse"] == pytest.approx(14 / 6)
    assert result["mse_at_horizon"] == pytest.approx({1: 1.0, 3: 4.5})
    json.dumps(result)


def test_rollout_error_ragged_horizons_and_add_batch():
    module = metric("rollout_error")
    module.add_batch(predictions=[np.array([[1.0, 1.0], [0.0, 2.0], [3.0, 3.0]])], references=[np.zeros((3, 2))])
    module.add(prediction=torch.ones(2, 2), reference=torch.zeros(2, 2))  # MSE [1, 1]
    result = module.compute()
    assert result["mse_per_horizon"] == pytest.approx([1.0, 1.5, 9.0])  # step 3: trajectory A alone
    assert result["mse"] == pytest.approx(14 / 5)


def test_rollout_error_32_trajectories_80_steps_3072_values_in_seconds():
    rng = np.random.default_rng(0)
    predictions = rng.random((32, 80, 3072), dtype=np.float32)
    references = rng.random((32, 80, 3072), dtype=np.float32)
    start = time.perf_counter()
    result = load_metric("rollout_error").compute(predictions=predictions, references=references)  # Arrow cache file
    assert time.perf_counter() - start < 30  # about 1.5 s on 2 CPU cores
    assert len(result["mse_per_horizon"]) == 80
    assert result["mse"] == pytest.approx(1 / 6, rel=1e-2)  # E[(u - v)²] for independent uniforms


def constant_frames(offsets, base=0.5, pixels=4):
    """(H, pixels) frames at `base + offset` per step."""
    return np.array([[base + offset] * pixels for offset in offsets], dtype=np.float32)


def test_valid_prediction_time_by_hand():
    # Truth 0.5 everywhere: mean(x²) = 0.25, so an offset d gives e = d² / 0.25 (0.05 -> 0.01, 0.1 -> 0.04).
    offsets = [
        [0.05, 0.05, 0.1, 0.0],  # first step over 0.025 at index 2 -> VPT 2 (the later recovery does not count)
        [0.1, 0.0, 0.0, 0.0],  # first step already over -> 0
        [0.0, 0.05, 0.05, 0.05],  # never over -> H = 4
        [0.0, 0.0, 0.0, -0.1],  # -> 3
    ]
    predictions = [constant_frames(o) for o in offsets]
    references = [constant_frames([0.0] * 4)] * 4
    result = metric("valid_prediction_time").compute(predictions=predictions, references=references)
    assert result["vpt_per_trajectory"] == [2, 0, 4, 3]
    assert result["vpt"] == 2.5  # median of an even count: mean of the middle two (2, 3)
    assert result["vpt_mean"] == 2.25
    assert result["normalized_error_per_horizon"] == pytest.approx([0.0125, 0.005, 0.0125, 0.0125], rel=1e-5)
    json.dumps(result)


def test_valid_prediction_time_threshold_is_inclusive():
    # Truth 1, prediction 0.5: e = 0.25 exactly at every step.
    predictions, references = [np.full((3, 2, 2), 0.5)], [np.ones((3, 2, 2))]
    module = metric("valid_prediction_time")
    assert module.compute(predictions=predictions, references=references, threshold=0.25)["vpt"] == 3
    assert module.compute(predictions=predictions, references=references, threshold=0.2)["vpt"] == 0


def test_frame_quality_by_hand():
    identical = np.full((2, 1, 16, 16), 0.5)
    # 0.25 against 0.5: MSE 1/16 -> PSNR 10·log10(16); constant images: SSIM = (2·μx·μy + C1) / (μx² + μy² + C1),
    # C1 = 0.01² -> 0.2501 / 0.3126.
    darker = np.full((2, 1, 16, 16), 0.25)
    result = metric("frame_quality").compute(predictions=[identical, darker], references=[identical, identical])
    assert result["psnr_per_horizon"] == pytest.approx([(100.0 + 12.041199826559248) / 2] * 2)
    assert result["ssim_per_horizon"] == pytest.approx([(1.0 + 0.2501 / 0.3126) / 2] * 2, rel=1e-5)
    json.dumps(result)


def test_frame_quality_identical_frames_psnr_cap_and_ssim_one():
    frames = np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32)
    result = metric("frame_quality").compute(predictions=[frames], references=[frames.copy()])
    assert result["psnr"] == 100.0 and math.isfinite(result["psnr"])  # the documented cap, not inf
    assert result["ssim_per_horizon"] == pytest.approx([1.0] * 3, abs=1e-5)


def test_frame_quality_grayscale_without_channel_axis():
    frames = np.full((2, 16, 16), 0.5)  # (H, Hh, W)
    result = metric("frame_quality").compute(predictions=[frames * 0.5], references=[frames])
    assert result["psnr"] == pytest.approx(12.041199826559248)


def test_energy_drift_by_hand():
    # Constant predicted energy 2 against truth [1, 2, 3] (scale 2): [0.5, 0, 0.5]. Negative (gravitational) energy
    # [-4, -4] (scale 4) against the prediction [-4, -2]: [0, 0.5].
    result = metric("energy_drift").compute(
        predictions=[[2.0, 2.0, 2.0], [-4.0, -2.0]], references=[[1, 2, 3], [-4, -4]]
    )
    assert result["drift_per_horizon"] == pytest.approx([0.25, 0.25, 0.5])
    assert result["drift"] == pytest.approx(1.5 / 5)
    assert result["final_drift"] == pytest.approx(0.5)  # each trajectory's last step
    json.dumps(result)


FRAMES = np.full((2, 1, 12, 12), 0.5)
BAD_INPUTS = [
    # (metric, predictions, references, compute kwargs, message)
    ("rollout_error", [np.zeros((3, 2))], [np.zeros((3, 4))], {}, r"predictions\[0\].*\(3, 4\).*\(3, 2\)"),
    ("rollout_error", [np.zeros(3)], [np.zeros(3)], {}, r"predictions\[0\].*\(H, \.\.\.\).*\(3,\)"),
    ("rollout_error", [np.zeros((3, 2))], [np.full((3, 2), np.nan)], {}, r"references\[0\].*finite.*6 NaN"),
    ("rollout_error", [np.zeros((3, 2))] * 2, [np.zeros((3, 2))], {}, r"predictions.*references.*2 and 1"),
    ("rollout_error", [np.zeros((3, 2))], None, {}, r"references.*None"),
    ("rollout_error", [np.zeros((3, 2))], [np.zeros((3, 2))], {"horizons": [0, 4]}, r"horizons.*\[1, 3\]"),
    ("valid_prediction_time", [np.full((2, 4), 1.5)], [np.full((2, 4), 0.5)], {}, r"predictions\[0\].*\[0, 1\]"),
    ("valid_prediction_time", [np.full((2, 4), 0.5)], [np.zeros((2, 4))], {}, r"references\[0\].*all-zero.*step 0"),
    ("valid_prediction_time", [np.ones((2, 4))], [np.ones((2, 4))], {"threshold": -1}, r"threshold.*-1"),
    ("frame_quality", [FRAMES], [FRAMES[:1]], {}, r"predictions\[0\].*\(1, 1, 12, 12\).*\(2, 1, 12, 12\)"),
    ("frame_quality", [FRAMES - 0.6], [FRAMES], {}, r"predictions\[0\].*\[0, 1\]"),
    ("frame_quality", [np.zeros((2, 4))], [np.zeros((2, 4))], {}, r"predictions\[0\].*\(H, C, Hh, W\).*\(2, 4\)"),
    ("frame_quality", [np.zeros((2, 1, 8, 8))], [np.zeros((2, 1, 8, 8))], {}, r"predictions\[0\].*11×11.*8×8"),
    ("energy_drift", [[1.0, 2.0]], [[0.0, 0.0]], {}, r"references\[0\].*mean_t \|E_t\| > 0"),
    ("energy_drift", [[1.0, float("nan")]], [[1.0, 2.0]], {}, r"predictions\[0\].*finite"),
    ("energy_drift", [np.ones((2, 2))], [np.ones((2, 2))], {}, r"predictions\[0\].*\(H,\).*\(2, 2\)"),
]


@pytest.mark.parametrize("name, predictions, references, kwargs, message", BAD_INPUTS)
def test_bad_inputs_raise_naming_the_argument(name, predictions, references, kwargs, message):
    with pytest.raises(ValueError, match=message):
        metric(name).compute(predictions=predictions, references=references, **kwargs)
