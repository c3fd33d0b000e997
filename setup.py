"""Installs the `modeling_veltrix` package. Install torch first where a CPU build is wanted:

pip install torch==2.13.0 && pip install -e ".[test,demo]"

`[demo]` also brings the Gradio app (scripts/app.py); `[test]` the browser test's Playwright (no browser download:
the test drives the system's chromium).
"""

from setuptools import find_packages, setup

setup(
    name="veltrix",
    version="0.1.0",
    description="Veltrix: a Hugging Face-compatible latent world model that evolves a world state.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # The model (the package root) and its tooling subpackages (worlds, training, evaluation, hub, benchmarks).
    packages=find_packages(include=["modeling_veltrix", "modeling_veltrix.*"]),
    # The `evaluate` metric scripts, their shared `trajectory_inputs.py` and their cards: one plain folder (no
    # `__init__.py`) that `evaluate.load` reads.
    package_data={"modeling_veltrix.evaluation": ["metric_modules/*.py", "metric_modules/*.md"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0",
        "diffusers>=0.35",
        "huggingface_hub>=1.0",
        "accelerate>=1.0",
        "datasets>=3.0",
        "safetensors>=0.4",
        "evaluate>=0.4",
        "numpy",
        "pillow",
        "scipy>=1.10",  # connected components of decoded frames (evaluation/sample_metrics.py)
        "torchmetrics>=1.0",
        "vector-quantize-pytorch>=1.20",  # the residual quantizer of the encoder's audio units (audio_units.py)
    ],
    # `VeltrixPipeline.save_pretrained` runs the repository writers of this group: the Hub export (code files).
    entry_points={"veltrix.repository_writers": ["hub_export = modeling_veltrix.hub.export:write_hub_code"]},
    extras_require={
        "cuda": ["mamba-ssm>=2.2", "causal-conv1d>=1.4"],
        # The app's browser test drives Debian's chromium (installed by .ci/run) with Playwright.
        "test": [
            "pytest>=8",
            "hypothesis>=6",
            "ruff>=0.6",
            "matplotlib>=3.7",
            "gradio>=5",
            "playwright>=1.40",
            "av>=12",
            "gym-pusht>=0.1.5",
        ],
        "demo": ["matplotlib>=3.7", "gradio>=5"],
        # `scripts/train.py --dataset <folder of videos>` decodes them with PyAV (`training.sources`).
        "video": ["av>=12"],
        # Push-T, the planning benchmark's second task (`modeling_veltrix.planning.pusht`): gymnasium + pymunk.
        "planning": ["gym-pusht>=0.1.5"],
    },
)
