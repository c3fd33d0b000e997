"""scripts/benchmark_decoder.py --quick writes BENCHMARKS.md-shaped JSON with the named target."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parent.parent


def test_quick_run_writes_the_report(tmp_path):
    output = tmp_path / "decoder.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark_decoder.py"), "--quick", "--output", str(output)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert set(report) == {"environment", "results", "targets"}
    assert report["environment"]["kernel_path"] == "torch" and report["environment"]["threads"] >= 1
    per_steps = report["results"]["per_num_inference_steps"]
    assert set(per_steps) == {"1", "4", "50"}
    for values in per_steps.values():
        assert values["psnr"] > 0 and -1 <= values["ssim"] <= 1
        assert 0 < values["frames_per_s"]["min"] <= values["frames_per_s"]["median"] <= values["frames_per_s"]["max"]
    [target] = report["targets"]
    assert target["name"] == "psnr_4_over_50" and target["op"] == ">=" and target["target"] == 0.95
    assert target["value"] == per_steps["4"]["psnr"] / per_steps["50"]["psnr"]


def test_needs_exactly_one_source(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark_decoder.py"), "--output", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--pipeline DIR or --quick" in result.stderr
