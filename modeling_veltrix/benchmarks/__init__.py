"""The logic behind `scripts/benchmark_*.py`: each benchmark measures side by side in one run and writes a JSON
report in the shape of BENCHMARKS.md (`reports.save_report`)."""

from .decoder import benchmark_decoder_steps, run_decoder_benchmark
from .reports import environment_record, save_report

__all__ = [
    "benchmark_decoder_steps",
    "environment_record",
    "run_decoder_benchmark",
    "save_report",
]
