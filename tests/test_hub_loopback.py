"""Publishing end to end against a loopback Hub API (`loopback_hub.LoopbackHub`, `HF_ENDPOINT` pointing at it):
`scripts/push_to_hub.py --dry-run` writes a repository whose card validates and which loads; the push sends exactly
that folder; then every loader reads it by repository id through the Hugging Face cache, with and without the
package, online and offline; and the model card's usage snippets run as written."""

import contextlib
import io
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from hub_helpers import INSTALLED_PACKAGE_CHECK, REMOTE_CODE_CHECK, save_reference, tiny_pipeline
from huggingface_hub import ModelCard, metadata_load
from loopback_hub import LoopbackHub

from modeling_veltrix import VeltrixPipeline
from modeling_veltrix.benchmarks import environment_record
from modeling_veltrix.evaluation import evaluate_rollouts, rollout_targets
from modeling_veltrix.evaluation.visualization import save_error_plot, save_rollout_gif
from modeling_veltrix.hub.model_card import validate_model_card
from modeling_veltrix.hub.remote_code_check import run_without_package
from modeling_veltrix.training import COMPONENTS, VeltrixTrainingRecipe
from modeling_veltrix.worlds import build_world_dataset

REPO = Path(__file__).parent.parent
BUNDLE = REPO / "pipelines" / "veltrix-tiny-bouncing-balls"
REPO_ID = "veltrix-tests/veltrix-tiny-bouncing-balls"
CONTEXT, HORIZON, WINDOW = 4, 4, 2


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder as `scripts/demo.py` writes it (trained components, recipe, metrics, GIF, plot), from a tiny
    random-weight pipeline evaluated on two held-out bouncing-balls trajectories."""
    root = tmp_path_factory.mktemp("run")
    pipe = tiny_pipeline(image_size=32)
    for name in COMPONENTS:
        getattr(pipe, name).save_pretrained(root / name)
    recipe = VeltrixTrainingRecipe(world="bouncing_balls", context_length=CONTEXT, rollout_window=WINDOW)
    recipe.to_json_file(str(root / "recipe.json"))
    held_out = build_world_dataset(
        "bouncing_balls", num_trajectories=2, num_steps=CONTEXT + HORIZON, seed=5, cache_dir=str(root / "cache")
    ).with_format("torch")
    evaluation = evaluate_rollouts(pipe, held_out, CONTEXT, HORIZON, num_inference_steps=2, seed=0)
    shapes = {"held_out_trajectories": 2, "context_length": CONTEXT, "horizon": HORIZON, "training_window": WINDOW}
    shapes.update(units_per_step=16, unit_dim=8)
    metrics = {
        "environment": {
            **environment_record(pipe),
            "shapes": shapes,
            "data": {"world": "bouncing_balls", "split": "held-out", "seed": 5},
            "sampling": {"num_inference_steps": 2},
            "wall_clock_s": 1.0,
        },
        "results": {
            "horizons": list(range(1, HORIZON + 1)),
            "pixel_mse": {name: values.tolist() for name, values in evaluation.pixel_mse.items()},
            "parameters": {
                n: sum(p.numel() for p in getattr(pipe, n).parameters()) for n in ("encoder", "evolver", "decoder")
            },
        },
        "targets": rollout_targets(evaluation, WINDOW),
    }
    (root / "metrics.json").write_text(json.dumps(metrics))
    save_rollout_gif(evaluation.true_frames, evaluation.predicted_frames, str(root / "rollout.gif"))
    save_error_plot(evaluation.pixel_mse, str(root / "error_vs_horizon.png"), WINDOW)
    return root


@pytest.fixture(scope="module")
def dry_run(run_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(folder written by `push_to_hub.py --dry-run`, reference outputs of the pipeline in it). The script runs in
    this process (no import cost; a dry run contacts no Hub); the push (`pushed`) and every load run in new ones."""
    folder = tmp_path_factory.mktemp("dry") / "repository"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(sys, "argv", ["push_to_hub.py", *push_arguments(run_dir, ["--dry-run", str(folder)])])
        runpy.run_path(str(REPO / "scripts" / "push_to_hub.py"), run_name="__main__")
    assert "nothing was pushed" in printed.getvalue()
    reference = folder.parent / "reference.safetensors"
    pipe = VeltrixPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    save_reference(pipe, str(reference))
    return folder, reference


@pytest.fixture(scope="module")
def hub():
    with LoopbackHub(max_requests=3000, lifetime_s=900) as server:
        yield server


@pytest.fixture(scope="module")
def pushed(run_dir, hub, tmp_path_factory) -> LoopbackHub:
    """The loopback Hub after `push_to_hub.py --private` pushed the bundle's repository to it."""
    result = push_to_hub(run_dir, ["--private"], hub_env(hub, tmp_path_factory.mktemp("pusher")))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"pushed veltrix-tiny-bouncing-balls to {hub.endpoint}/{REPO_ID}" in result.stdout
    return hub


def push_arguments(run_dir: Path, extra: list[str]) -> list[str]:
    return ["--bundle", str(BUNDLE), "--weights", str(run_dir), "--repo-id", REPO_ID, *extra]


def push_to_hub(run_dir: Path, extra: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "scripts" / "push_to_hub.py"), *push_arguments(run_dir, extra)]
    return subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)


def hub_env(hub: LoopbackHub, home: Path, offline: bool = False) -> dict[str, str]:
    """The environment of a process that talks to the loopback Hub, with its own Hugging Face cache."""
    return {
        "HF_ENDPOINT": hub.endpoint,
        "HF_TOKEN": "hf_loopback_token",
        "HF_HOME": str(home),
        "HF_DATASETS_CACHE": str(home / "datasets"),
        "HF_HUB_OFFLINE": "1" if offline else "0",
    }


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dry_run_writes_a_repository_whose_card_validates_and_which_loads(dry_run):
    folder, _ = dry_run
    card = validate_model_card(str(folder))
    metadata = metadata_load(folder / "README.md")
    assert ModelCard(str(card)).data.to_dict() == metadata  # the front matter survives a write and read
    assert metadata["library_name"] == "diffusers" and metadata["pipeline_tag"] == "video-to-video"
    assert metadata["datasets"] == ["veltrix-worlds/bouncing_balls"]
    results = metadata["model-index"][0]["results"][0]
    assert [m["name"] for m in results["metrics"]] == [f"pixel MSE at horizon {h}" for h in (1, WINDOW, HORIZON)]
    assert f'pipeline("world-rollout", model="{REPO_ID}")' in card.text
    assert "{{" not in card.content
    assert {"rollout.gif", "error_vs_horizon.png", "metrics.json", "recipe.json"} <= set(os.listdir(folder))
    pipe = VeltrixPipeline.from_pretrained(folder)
    assert (pipe.config.default_num_future_steps, pipe.config.default_num_inference_steps) == (24, 8)


def test_card_validation_names_what_is_wrong(dry_run, tmp_path):
    folder, _ = dry_run
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "README.md").write_text((folder / "README.md").read_text().replace("datasets:", "old_datasets:"))
    with pytest.raises(ValueError, match=r"lacks \['datasets'\]"):
        validate_model_card(str(broken))
    (broken / "README.md").write_text((folder / "README.md").read_text())
    with pytest.raises(ValueError, match="rollout.gif"):
        validate_model_card(str(broken))


def test_push_sends_exactly_the_dry_run_folder(dry_run, pushed):
    assert pushed.repos[REPO_ID]["private"]
    assert pushed.repos[REPO_ID]["files"] == files_of(dry_run[0])


def test_nothing_uploaded_names_a_local_path(dry_run, pushed, run_dir):
    """No file of the repository (configs' `_name_or_path`, card snippets, run records) and no commit message names
    the run folder, the dry-run folder or this checkout."""
    local = [str(run_dir), str(dry_run[0]), str(REPO)]
    for path, content in files_of(dry_run[0]).items():
        text = content.decode("utf-8", errors="ignore")
        assert not [place for place in local if place in text], f"{path} names {[p for p in local if p in text]}"
        assert not (path.endswith(".json") and "_name_or_path" in json.loads(text)), path
    messages = pushed.repos[REPO_ID]["commit_messages"]
    assert messages and not [m for m in messages for place in local if place in m], messages


def test_dry_run_refuses_a_folder_that_holds_files(run_dir, tmp_path, monkeypatch):
    """`--dry-run` into a folder with someone's files, or into the run folder itself, is refused, and nothing there
    changes (the script runs in this process: no import cost)."""
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("keep me")
    for target in (taken, run_dir):
        before = files_of(target)
        monkeypatch.setattr(sys, "argv", ["push_to_hub.py", *push_arguments(run_dir, ["--dry-run", str(target)])])
        with pytest.raises(SystemExit, match="new or empty folder"):
            runpy.run_path(str(REPO / "scripts" / "push_to_hub.py"), run_name="__main__")
        assert files_of(target) == before


def test_every_loader_reads_the_repository_by_id(dry_run, pushed, tmp_path):
    """Through the Hugging Face cache: online, then offline from the cached snapshot; anonymous users see nothing
    of the private repository."""
    hub, reference = pushed, dry_run[1]
    home = tmp_path / "user"
    online, offline = hub_env(hub, home), hub_env(hub, home, offline=True)
    for env, label in ((online, "online"), (offline, "offline, from the cache")):
        remote = run_without_package(REMOTE_CODE_CHECK, [REPO_ID, str(reference)], str(tmp_path / "remote"), env)
        assert remote.returncode == 0, label + remote.stdout[-2000:] + remote.stderr[-4000:]
        installed = subprocess.run(
            [sys.executable, "-c", INSTALLED_PACKAGE_CHECK, REPO_ID, str(reference)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert installed.returncode == 0, label + installed.stdout[-2000:] + installed.stderr[-4000:]
    snapshots = list((home / "hub" / f"models--{REPO_ID.replace('/', '--')}" / "snapshots").iterdir())
    assert len(snapshots) == 1 and (snapshots[0] / "model_index.json").is_file()

    anonymous = run_without_package(
        "from diffusers import DiffusionPipeline\nDiffusionPipeline.from_pretrained(__import__('sys').argv[1])\n",
        [REPO_ID],
        str(tmp_path / "anonymous"),
        {**online, "HF_TOKEN": "", "HF_HOME": str(tmp_path / "anonymous-home")},
    )
    assert anonymous.returncode != 0 and "Repository Not Found" in anonymous.stderr


def test_model_card_snippets_run_as_written(dry_run, pushed, tmp_path):
    """Each python block of the published card, in a fresh process: the one that imports the package with it, the
    others where it cannot be imported; all load the repository by id from the loopback Hub."""
    hub = pushed
    card = ModelCard((dry_run[0] / "README.md").read_text())
    snippets = re.findall(r"```python\n(.*?)```", card.text, flags=re.DOTALL)
    assert len(snippets) == 3
    assert 'pipeline("world-rollout"' in snippets[0]  # the first usage example is the one-liner
    env = hub_env(hub, tmp_path / "reader")
    for index, snippet in enumerate(snippets):
        workdir = tmp_path / f"snippet{index}"
        workdir.mkdir()
        if "import modeling_veltrix" in snippet:
            result = subprocess.run(
                [sys.executable, "-c", snippet],
                cwd=workdir,
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=600,
            )
        else:
            result = run_without_package(snippet, [], str(workdir), env)
        assert result.returncode == 0, f"snippet {index}:\n{snippet}\n{result.stderr[-4000:]}"
    assert (tmp_path / "snippet0" / "first_future_frame.png").is_file()


SUBFOLDER_CHECK = """
import sys
from huggingface_hub import HfApi
from transformers import AutoModel
from modeling_veltrix.pipeline_veltrix import VeltrixWorldModel
repo_id, folder = sys.argv[1:]
HfApi().create_repo(repo_id, private=True)
HfApi().upload_folder(repo_id=repo_id, folder_path=folder, path_in_repo="world")
HfApi().upload_file(repo_id=repo_id, path_or_fileobj=b"not a pipeline", path_in_repo="notes.txt")
loaders = (VeltrixWorldModel.from_pretrained, AutoModel.from_pretrained)
for model in (load(repo_id, subfolder="world") for load in loaders):
    assert isinstance(model, VeltrixWorldModel), type(model)
    assert model.pipeline.config.default_num_future_steps == 24
print("loaded from the subfolder")
"""


def test_the_world_model_loads_a_subfolder_of_a_repository_by_id(dry_run, hub, tmp_path):
    """A pipeline saved under `world/` of a Hub repository loads with `subfolder="world"`, and only that folder's
    files are downloaded."""
    home = tmp_path / "user"
    result = subprocess.run(
        [sys.executable, "-c", SUBFOLDER_CHECK, "veltrix-tests/nested", str(dry_run[0])],
        env={**os.environ, **hub_env(hub, home)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    snapshots = list((home / "hub" / "models--veltrix-tests--nested" / "snapshots").iterdir())
    assert len(snapshots) == 1
    downloaded = {p.relative_to(snapshots[0]).parts[0] for p in snapshots[0].rglob("*") if p.is_file()}
    assert downloaded == {"world"}
