"""The encoder benchmark (`scripts/benchmark_encoder.py`) on a few trajectories and steps: a BENCHMARKS.md-shaped
report with its four targets, and exact fusion figures whatever the training."""

from modeling_veltrix.benchmarks.encoder import run_encoder_benchmark


def test_encoder_benchmark_report_has_its_targets():
    report = run_encoder_benchmark(
        train_trajectories=4, eval_trajectories=2, num_steps=4, train_steps=2, batch_size=8, seed=0
    )
    assert set(report) == {"environment", "data", "model", "results", "targets"}
    names = [target["name"] for target in report["targets"]]
    assert names == [
        "fusion_orthogonality_error",
        "fusion_linear_roundtrip_error",
        "retrieval_r1_over_chance_text_frame",
        "caption_event_accuracy",
    ]
    assert report["targets"][0]["value"] <= 1e-5 and report["targets"][1]["value"] <= 1e-5
    assert len(report["results"]["training_history"]) > 0
    assert set(report["results"]["held_out"]["psnr_by_num_units"]) == {str(k) for k in range(1, 9)}
