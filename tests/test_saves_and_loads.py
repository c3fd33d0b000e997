"""Saves and loads of a pipeline folder that refuse damage and never mix: a folder re-saved by another process while
it is loaded gives each load one save (or a named error), never a mix; damaged weights (a missing layer, an
unexpected tensor, a wrong shape, NaN values), a malformed `model_index.json` entry and components that do not fit
raise `VeltrixRepositoryError` naming the file; a save swaps in a complete folder and deletes nothing before."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hub_helpers import tiny_pipeline
from safetensors.torch import load_file, save_file
from transformers import pipeline

import modeling_veltrix.repository_check as repository_check
from modeling_veltrix import VeltrixEvolverModel, VeltrixPipeline, VeltrixRepositoryError
from modeling_veltrix.repository_check import SAVE_ID_KEY, write_folder_atomically

TESTS = Path(__file__).parent
COMPONENT_WEIGHTS = {
    "encoder": "encoder/model.safetensors",
    "evolver": "evolver/model.safetensors",
    "decoder": "decoder/diffusion_pytorch_model.safetensors",
}


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture
def folder(pipe, tmp_path) -> Path:
    pipe.save_pretrained(tmp_path / "pipeline")
    return tmp_path / "pipeline"


def edit_weights(folder: Path, component: str, edit) -> str:
    """Rewrites `component`'s safetensors file with `edit(state_dict)` applied; returns the file's path."""
    path = folder / COMPONENT_WEIGHTS[component]
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata={"format": "pt"})
    return str(path)


def drop_layer(state: dict) -> None:
    for key in [k for k in state if k.startswith(sorted(state)[0].rsplit(".", 1)[0] + ".")]:
        del state[key]


# -- concurrent re-saves ----------------------------------------------------------------------------------------

SAVER = textwrap.dedent(
    """
    import os, sys, time, torch
    sys.path.insert(0, sys.argv[1])
    import modeling_veltrix.repository_check as repository_check
    from hub_helpers import tiny_pipeline
    folder, stop = sys.argv[2], sys.argv[3]
    exchange = repository_check._exchange
    pipe = tiny_pipeline()
    save = 1
    open(stop + ".started", "w").close()
    while not os.path.exists(stop):
        with torch.no_grad():  # marks which save it is
            for name in ("encoder", "evolver", "decoder"):
                next(getattr(pipe, name).parameters()).view(-1)[0] = float(save)
        # Every other save swaps with two renames, as on systems without Linux's atomic exchange.
        repository_check._exchange = exchange if save % 2 else (lambda first, second: False)
        pipe.save_pretrained(folder)
        save += 1
    print(save - 1)
    """
)


def save_markers(loaded: VeltrixPipeline) -> set[float]:
    """The save marks of the loaded components (one value: one save; several: a mix)."""
    return {float(next(getattr(loaded, name).parameters()).detach().view(-1)[0]) for name in COMPONENT_WEIGHTS}


def mark(pipe: VeltrixPipeline, save: int) -> None:
    """Sets the save mark of every component to `save`."""
    with torch.no_grad():
        for name in COMPONENT_WEIGHTS:
            next(getattr(pipe, name).parameters()).view(-1)[0] = float(save)


def test_loads_during_resaves_never_mix_saves(tmp_path):
    folder, stop = tmp_path / "pipeline", tmp_path / "stop"
    first = tiny_pipeline()
    mark(first, 0)
    first.save_pretrained(folder)
    saver = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(TESTS), str(folder), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    counts, others, others_named = {"consistent": 0, "mixed": 0, "named_error": 0}, [], []
    try:
        started = time.monotonic()
        while not Path(f"{stop}.started").exists() and saver.poll() is None and time.monotonic() < started + 120:
            time.sleep(0.1)
        deadline = time.monotonic() + 12.0
        while time.monotonic() < deadline:
            try:
                loaded = VeltrixPipeline.from_pretrained(folder)
            except VeltrixRepositoryError as error:  # allowed: a named error (the folder changed twice during a load)
                counts["named_error"] += 1
                others_named.append(str(error)[:300])
                continue
            except Exception as error:  # anything else is a failure of the test
                others.append(f"{type(error).__name__}: {error}")
                continue
            counts["consistent" if len(save_markers(loaded)) == 1 else "mixed"] += 1
    finally:
        stop.touch()
        out, err = saver.communicate(timeout=120)
    assert saver.returncode == 0, err[-3000:]
    saves = int(out.split()[-1])
    print(f"\n{saves} saves, loads {counts}, named errors {others_named}, other errors {others}")
    assert saves >= 3 and counts["consistent"] >= 3, (saves, counts)
    assert counts["mixed"] == 0 and not others, (counts, others)


# -- damaged weights ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("component", "edit", "message"),
    [
        ("encoder", drop_layer, r"missing tensors \[\w"),
        ("evolver", lambda state: state.update(extra_tensor=torch.zeros(3)), r"unexpected tensors \[extra_tensor\]"),
        ("decoder", lambda state: state.update({sorted(state)[0]: torch.zeros(1, 1, 1, 7)}), "wrong shape"),
        ("decoder", lambda state: state[sorted(state)[-1]].fill_(float("nan")), "non-finite"),
    ],
    ids=["missing-layer", "unexpected-tensor", "wrong-shape", "nan"],
)
def test_damaged_weights_raise_naming_file_and_tensor(folder, component, edit, message):
    before = load_file(folder / COMPONENT_WEIGHTS[component])
    path = edit_weights(folder, component, edit)
    changed = sorted(set(before) ^ set(load_file(path)))  # a missing or unexpected tensor
    changed = changed or [k for k in sorted(before) if not torch.equal(before[k], load_file(path)[k])]
    for load in (
        lambda: VeltrixPipeline.from_pretrained(folder),
        lambda: pipeline("world-rollout", model=str(folder)),  # not wrapped in transformers' ValueError
    ):
        with pytest.raises(VeltrixRepositoryError, match=message) as caught:
            load()
        assert path in str(caught.value) and changed[0] in str(caught.value)


def test_strict_weights_false_loads_a_partial_checkpoint(folder):
    edit_weights(folder, "encoder", drop_layer)
    edit_weights(folder, "decoder", drop_layer)
    edit_weights(folder, "evolver", lambda state: state.update(extra_tensor=torch.zeros(3)))
    loaded = VeltrixPipeline.from_pretrained(folder, strict_weights=False)
    loaded.set_progress_bar_config(disable=True)
    frames = torch.zeros(1, 2, 3, 16, 16)
    assert torch.isfinite(loaded(frames, output_type="pt").frames).all()  # missing tensors initialised, not garbage
    edit_weights(folder, "decoder", lambda state: state[sorted(state)[-1]].fill_(float("inf")))
    with pytest.raises(VeltrixRepositoryError, match="non-finite"):  # the opt-out checks values still
        VeltrixPipeline.from_pretrained(folder, strict_weights=False)
    with pytest.raises(ValueError, match="strict_weights"):
        VeltrixPipeline.from_pretrained(folder, strict_weights="no")


@pytest.mark.parametrize("entry", [["modeling_veltrix_encoder"], "encoder", [1, 2], ["a", "b", "c"]])
def test_malformed_model_index_entry_is_named(folder, entry):
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["encoder"] = entry if isinstance(entry, list) else index["encoder"]
    index["_class_name"] = index["_class_name"] if isinstance(entry, list) else 3
    index_path.write_text(json.dumps(index))
    name = "`encoder`" if isinstance(entry, list) else "`_class_name`"
    with pytest.raises(VeltrixRepositoryError, match=name) as caught:
        VeltrixPipeline.from_pretrained(folder)
    assert str(index_path) in str(caught.value)


def test_components_that_do_not_fit_fail_at_load(folder, pipe):
    other = VeltrixEvolverModel(pipe.evolver.config.__class__(**{**pipe.evolver.config.to_dict(), "action_dim": 5}))
    other.save_pretrained(folder / "evolver")
    with pytest.raises(VeltrixRepositoryError, match="action_dim") as caught:
        VeltrixPipeline.from_pretrained(folder)
    assert str(folder / "evolver" / "config.json") in str(caught.value)


def test_components_of_two_saves_are_refused(folder, pipe, tmp_path):
    with torch.no_grad():
        next(pipe.encoder.parameters()).view(-1)[0] += 1.0
    try:
        pipe.save_pretrained(tmp_path / "other")
    finally:
        with torch.no_grad():
            next(pipe.encoder.parameters()).view(-1)[0] -= 1.0
    for name in os.listdir(tmp_path / "other" / "encoder"):
        os.replace(tmp_path / "other" / "encoder" / name, folder / "encoder" / name)
    with pytest.raises(VeltrixRepositoryError, match="mixes saves") as caught:
        VeltrixPipeline.from_pretrained(folder)
    assert str(folder / "encoder" / "config.json") in str(caught.value)


# -- saves ---------------------------------------------------------------------------------------------------------


def test_save_ids_are_the_content_and_no_local_path_is_saved(folder, pipe, tmp_path):
    loaded = VeltrixPipeline.from_pretrained(folder)  # its configs now know `folder` as `_name_or_path`
    loaded.save_pretrained(tmp_path / "again")
    ids = set()
    for path in (tmp_path / "again").rglob("*.json"):
        text = path.read_text()
        assert str(tmp_path) not in text and "_name_or_path" not in text, path
        ids.add(json.loads(text).get(SAVE_ID_KEY))
    ids.discard(None)  # the root config.json carries none
    index = json.loads((folder / "model_index.json").read_text())
    assert ids == {index[SAVE_ID_KEY]}  # the same content, the same id: an unchanged re-upload changes nothing


def test_folder_swap_deletes_nothing_before_the_new_folder_is_in_place(tmp_path, monkeypatch):
    target = tmp_path / "target"
    target.mkdir()
    (target / "old.txt").write_text("old")

    def failing(staging: str) -> None:
        os.makedirs(staging)
        Path(staging, "half.txt").write_text("half")
        raise KeyboardInterrupt  # a kill while the new folder is written

    with pytest.raises(KeyboardInterrupt):
        write_folder_atomically(failing, target)
    assert os.listdir(target) == ["old.txt"]

    def complete(staging: str) -> None:
        os.makedirs(staging)
        Path(staging, "new.txt").write_text("new")

    # Without the atomic exchange, a kill between the two renames leaves the old folder at `target.old`; the next save
    # moves it back first, so no folder is ever lost.
    monkeypatch.setattr(repository_check, "_exchange", lambda first, second: False)
    real_replace = os.replace
    monkeypatch.setattr(
        os,
        "replace",
        lambda a, b: (_ for _ in ()).throw(KeyboardInterrupt) if a.endswith(".tmp") else real_replace(a, b),
    )
    with pytest.raises(KeyboardInterrupt):
        write_folder_atomically(complete, target)
    assert not target.exists() and os.listdir(f"{target}.old") == ["old.txt"]
    monkeypatch.setattr(os, "replace", real_replace)
    repository_check._recover_interrupted_save(str(target), f"{target}.tmp", f"{target}.old")
    assert os.listdir(target) == ["old.txt"] and not os.path.exists(f"{target}.tmp")
    monkeypatch.undo()
    write_folder_atomically(complete, target)  # with the exchange where the system has it
    assert os.listdir(target) == ["new.txt"]
    assert not os.path.exists(f"{target}.tmp") and not os.path.exists(f"{target}.old")
