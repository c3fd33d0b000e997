"""`VeltrixPipeline.save_pretrained` writes one folder that every loader reads: the installed package, and a fresh
process where `import modeling_veltrix` fails (`trust_remote_code=True`): `DiffusionPipeline.from_pretrained`,
`AutoModel.from_pretrained(folder/<component>)`, `pipeline(model=folder)`. Damaged folders raise errors naming the
file; the source inliner flattens relative imports."""

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import PIL.Image
import pytest
import torch
from hub_helpers import NUM_FUTURE_STEPS, REMOTE_CODE_CHECK, SEED, save_reference, tiny_pipeline
from safetensors.torch import load_file
from transformers import AutoModel, pipeline

from modeling_veltrix import (
    VeltrixEncoderModel,
    VeltrixEvolverModel,
    VeltrixPipeline,
    VeltrixRepositoryError,
    VeltrixWorldModel,
)
from modeling_veltrix.hub.remote_code_check import run_without_package
from modeling_veltrix.hub.source_inlining import LOADER_RELATIVE_IMPORT, inline_relative_imports

PACKAGE_ROOT = Path(__file__).parent.parent / "modeling_veltrix"
TOOLING_SUBPACKAGES = sorted(p.name for p in PACKAGE_ROOT.iterdir() if (p / "__init__.py").exists())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(folder, reference file, reference tensors) of a saved tiny pipeline."""
    root = tmp_path_factory.mktemp("hub")
    pipe = tiny_pipeline()
    reference = save_reference(pipe, str(root / "reference.safetensors"))
    pipe.save_pretrained(root / "pipeline")
    return root / "pipeline", root / "reference.safetensors", reference


def damaged_copy(folder, tmp_path, damage: str):
    """A copy of `folder` with one defect, and the path that the error must name."""
    copy = tmp_path / f"damaged-{damage}"
    shutil.copytree(folder, copy)
    if damage == "truncated weights":
        path = copy / "encoder" / "model.safetensors"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "missing component":
        path = copy / "evolver"
        shutil.rmtree(path)
    elif damage == "newer layout":
        path = copy / "model_index.json"
        index = json.loads(path.read_text())
        path.write_text(json.dumps({**index, "_veltrix_format": index["_veltrix_format"] + 1}))
    elif damage == "unknown config field":
        path = copy / "evolver" / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "memory_slots": 64}))
    elif damage == "unknown pipeline setting":
        path = copy / "model_index.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "default_mode": "free"}))
    elif damage == "no model index":
        path = copy / "model_index.json"
        path.unlink()
    return copy, path


DAMAGES = (
    "truncated weights",
    "missing component",
    "newer layout",
    "unknown config field",
    "unknown pipeline setting",
    "no model index",
)
# Written by the folder's own code, which a remote-code load runs: no older code reads them.
UNKNOWN_TO_OLDER_CODE = ("unknown config field", "unknown pipeline setting")


def test_saved_folder_is_a_complete_hub_repository(saved):
    folder, _, _ = saved
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_veltrix", "VeltrixPipeline"]
    assert index["_veltrix_format"] == 1
    assert index["default_num_future_steps"] == NUM_FUTURE_STEPS
    modules = {name: index[name][0] for name in ("encoder", "evolver", "decoder")}
    assert modules == {name: f"modeling_veltrix_{name}" for name in modules}
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    for name, module in modules.items():  # one self-contained file per component, nothing else to fetch
        assert sorted(p.name for p in (folder / name).glob("*.py")) == [f"{module}.py"]
    for name in ("encoder", "evolver"):
        auto_map = json.loads((folder / name / "config.json").read_text())["auto_map"]
        assert auto_map["AutoModel"] == f"{modules[name]}.Veltrix{name.title()}Model"
        assert auto_map["AutoConfig"] == f"{modules[name]}.Veltrix{name.title()}Config"
    root = json.loads((folder / "config.json").read_text())
    assert root["auto_map"] == {
        "AutoConfig": "pipeline_veltrix.VeltrixWorldConfig",
        "AutoModel": "pipeline_veltrix.VeltrixWorldModel",
    }
    assert root["custom_pipelines"]["world-rollout"]["impl"] == "pipeline_veltrix.VeltrixWorldRolloutPipeline"
    weights = sorted(folder.rglob("*.safetensors"))
    assert [p.relative_to(folder).as_posix() for p in weights] == [
        "decoder/diffusion_pytorch_model.safetensors",
        "encoder/model.safetensors",
        "evolver/model.safetensors",
    ]
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in weights}) == 3
    assert not list(folder.rglob("*.bin")) and not list(folder.parent.glob("pipeline.*"))
    for code in folder.rglob("*.py"):
        source = code.read_text()
        compile(source, str(code), "exec")
        assert not LOADER_RELATIVE_IMPORT.search(source), code
        assert "modeling_veltrix." not in source.replace("modeling_veltrix.hub.source_inlining", ""), code


def test_loads_with_trust_remote_code_where_the_package_cannot_be_imported(saved, tmp_path):
    folder, reference_file, _ = saved
    result = run_without_package(REMOTE_CODE_CHECK, [str(folder), str(reference_file)], str(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "remote code reproduces the reference" in result.stdout


def test_installed_package_loads_with_its_own_classes(saved):
    folder, _, reference = saved
    pipe = VeltrixPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.encoder, VeltrixEncoderModel) and isinstance(pipe.evolver, VeltrixEvolverModel)
    out = pipe(
        reference["frames"],
        actions=reference["actions"],
        timestamps=reference["timestamps"],
        generator=torch.Generator().manual_seed(SEED),
        output_type="pt",
    )
    assert torch.equal(out.frames, reference["expected"])
    assert isinstance(AutoModel.from_pretrained(folder / "encoder"), VeltrixEncoderModel)
    assert isinstance(AutoModel.from_pretrained(folder), VeltrixWorldModel)


def test_world_rollout_task_needs_no_remote_code_with_the_package(saved):
    folder, _, reference = saved
    rollout = pipeline("world-rollout", model=str(folder))
    rollout.model.pipeline.set_progress_bar_config(disable=True)
    steps = dict(actions=reference["actions"], timestamps=reference["timestamps"])
    results = rollout(reference["frames"], seed=SEED, output_type="pt", **steps)
    assert torch.equal(torch.stack([r["frames"] for r in results]), reference["expected"])
    single = rollout(reference["frames"][0], actions=reference["actions"][0], timestamps=reference["timestamps"][0])
    assert len(single["frames"]) == NUM_FUTURE_STEPS and isinstance(single["frames"][0], PIL.Image.Image)
    torch.testing.assert_close(single["timestamps"], reference["timestamps"][0, -NUM_FUTURE_STEPS:])
    with pytest.raises(ValueError, match="pixel_values"):
        rollout(reference["frames"][0, 0])
    with pytest.raises(ValueError, match="output_type"):
        rollout(reference["frames"], output_type="latent")


def test_save_replaces_the_folder_whole(saved, tmp_path):
    folder, _, _ = saved
    target = tmp_path / "again"
    shutil.copytree(folder, target)
    (target / "stale.txt").write_text("from an earlier save")
    VeltrixPipeline.from_pretrained(folder).save_pretrained(target)
    assert not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no staging or previous folder left behind
    assert (
        load_file(target / "encoder" / "model.safetensors").keys()
        == load_file(folder / "encoder" / "model.safetensors").keys()
    )
    with pytest.raises(ValueError, match="safe_serialization"):
        VeltrixPipeline.from_pretrained(folder).save_pretrained(tmp_path / "pickled", safe_serialization=False)


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("loader", ["VeltrixPipeline", "pipeline()"])
def test_damaged_folder_raises_naming_the_file(saved, tmp_path, damage, loader):
    copy, path = damaged_copy(saved[0], tmp_path, damage)
    with pytest.raises(VeltrixRepositoryError, match=re.escape(str(path))):  # pipeline() does not wrap it either
        if loader == "VeltrixPipeline":
            VeltrixPipeline.from_pretrained(copy)
        else:
            pipeline("world-rollout", model=str(copy))


def test_damaged_folder_raises_naming_the_file_without_the_package(saved, tmp_path):
    copies = [damaged_copy(saved[0], tmp_path, damage) for damage in DAMAGES if damage != "no model index"]
    code = textwrap.dedent(
        """
        import json, sys
        from transformers import pipeline
        for folder in sys.argv[1:]:
            try:
                pipeline(model=folder, trust_remote_code=True)
            except Exception as error:
                print(json.dumps({folder: str(error)}))
            else:
                print(json.dumps({folder: "LOADED"}))
        """
    )
    result = run_without_package(code, [str(copy) for copy, _ in copies], str(tmp_path / "work"))
    assert result.returncode == 0, result.stderr[-4000:]
    errors = {k: v for line in result.stdout.splitlines() if line.startswith("{") for k, v in json.loads(line).items()}
    for (copy, path), damage in zip(copies, [d for d in DAMAGES if d != "no model index"], strict=True):
        if damage in UNKNOWN_TO_OLDER_CODE:
            assert errors[str(copy)] == "LOADED"
        else:
            assert str(path) in errors[str(copy)], errors[str(copy)]


def test_a_component_saved_alone_carries_its_auto_map_and_code(tmp_path):
    encoder = tiny_pipeline().encoder
    encoder.save_pretrained(tmp_path / "encoder")
    config = json.loads((tmp_path / "encoder" / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_veltrix.VeltrixEncoderConfig",
        "AutoModel": "modeling_veltrix_encoder.VeltrixEncoderModel",
    }
    copied = {p.name for p in (tmp_path / "encoder").glob("*.py")}
    assert {"modeling_veltrix_encoder.py", "configuration_veltrix.py", "input_validation.py"} <= copied


def test_repository_id_must_be_namespace_and_name(tmp_path):
    with pytest.raises(VeltrixRepositoryError, match="neither a folder nor a Hub repository id"):
        VeltrixPipeline.from_pretrained(str(tmp_path / "missing" / "folder"))


def write_package(root, files: dict[str, str]):
    package = root / "flatpkg"
    package.mkdir()
    for name, source in files.items():
        (package / name).write_text(textwrap.dedent(source))
    return package


def test_inliner_flattens_and_renames_colliding_names(tmp_path):
    package = write_package(
        tmp_path,
        {
            "first.py": '''
                """First helper module."""
                def scale(x):
                    return 2 * x
                LIMIT = 10
                __all__ = ["scale"]
            ''',
            "second.py": '''
                """Second helper module, with its own `scale` and a caller of it."""
                def scale(x, *, scale=3):  # the parameter shares the name and is renamed along
                    return scale * x
                def triple(x):
                    return scale(x, scale=3)
            ''',
            "main.py": '''
                """Main module."""
                from .first import LIMIT, scale
                from .second import triple as thrice
                def run(x):
                    return scale(x) + thrice(x) + LIMIT
            ''',
        },
    )
    source = inline_relative_imports(str(package / "main.py"))
    assert source.startswith('"""Main module."""')
    assert "from ." not in source and "__all__" not in source
    assert "def _second__scale(x, *, _second__scale=3)" in source
    namespace = {}
    exec(compile(source, "inlined.py", "exec"), namespace)
    assert namespace["run"](5) == 10 + 15 + 10
    assert namespace["thrice"] is namespace["triple"]


@pytest.mark.parametrize(
    ("main", "message"),
    [
        ("from ..outside import x\n", "only top-level"),
        ("from . import first\n", "only top-level"),
        ("def f():\n    from .first import scale\n", "only top-level"),
        ("from .missing import x\n", "is not a file next to it"),
        ('"""Docs quoting a line that\nfrom .first import scale\nreads as an import."""\n', "reads as a relative"),
    ],
)
def test_inliner_rejects_what_the_hub_loaders_cannot_load(tmp_path, main, message):
    package = write_package(tmp_path, {"first.py": "def scale(x):\n    return x\n", "main.py": main})
    with pytest.raises(ValueError, match=message):
        inline_relative_imports(str(package / "main.py"))


def test_inliner_rejects_import_cycles(tmp_path):
    package = write_package(tmp_path, {"a.py": "from .b import y\nx = 1\n", "b.py": "from .a import x\ny = 2\n"})
    with pytest.raises(ValueError, match="cycle, which cannot be inlined: a.py -> b.py -> a.py"):
        inline_relative_imports(str(package / "a.py"))


def test_every_package_module_that_a_folder_carries_inlines(saved):
    folder, _, _ = saved
    package = str(PACKAGE_ROOT)
    for module in ("modeling_veltrix_encoder", "modeling_veltrix_evolver", "modeling_veltrix_decoder"):
        source = inline_relative_imports(os.path.join(package, f"{module}.py"))
        assert (folder / module.removeprefix("modeling_veltrix_") / f"{module}.py").read_text() == source


def test_readme_first_usage_example_is_the_world_rollout_one_liner_and_runs(tmp_path):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    usage = readme[readme.index("## Use a trained pipeline") :]
    snippet = re.search(r"```python\n(.*?)```", usage, flags=re.DOTALL).group(1)
    assert 'pipeline("world-rollout", model="runs/demo/pipeline")' in snippet
    folder = tmp_path / "pipeline"
    tiny_pipeline(image_size=32).save_pretrained(folder)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    result = subprocess.run(
        [sys.executable, "-c", snippet.replace("runs/demo/pipeline", str(folder))],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert PIL.Image.open(tmp_path / "first_future_frame.png").size == (32, 32)


@pytest.mark.parametrize("component", ["encoder", "evolver"])
def test_truncated_component_weights_name_the_file(saved, tmp_path, component):
    """`AutoModel.from_pretrained(folder/<component>)` on its own, with and without the package."""
    copy = tmp_path / "copy"
    shutil.copytree(saved[0], copy)
    path = copy / component / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(VeltrixRepositoryError, match=re.escape(str(path))):
        AutoModel.from_pretrained(copy / component)
    code = textwrap.dedent(
        """
        import sys
        from transformers import AutoModel
        try:
            AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
        except OSError as error:
            print("ERROR:", error)
        """
    )
    result = run_without_package(code, [str(copy / component)], str(tmp_path / "work"))
    assert f"ERROR: {path} is truncated" in result.stdout, result.stderr[-3000:]


def top_level_names(pattern: str) -> set[str]:
    """Every name that the package modules matching `pattern` define at top level."""
    names = set()
    for module in PACKAGE_ROOT.glob(pattern):
        for node in ast.parse(module.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    return names


def tooling_names() -> set[str]:
    """The subpackages' names and every name that their modules define at top level, less the names that the model's
    own root modules define too (a module-level `logger` in both is two names, not a leak)."""
    return (set(TOOLING_SUBPACKAGES) | top_level_names("*/*.py")) - top_level_names("*.py") - {"__all__"}


def test_root_modules_never_import_a_subpackage():
    assert {"worlds", "training", "evaluation", "hub", "benchmarks"} <= set(TOOLING_SUBPACKAGES)
    for module in PACKAGE_ROOT.glob("*.py"):
        if module.name == "__init__.py":  # the package's entry point registers the tooling (Hub export)
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert node.level == 1 and node.module, f"{module.name}: `from {'.' * node.level}{node.module or ''}`"
                assert node.module.split(".")[0] not in TOOLING_SUBPACKAGES, f"{module.name} imports {node.module}"
                assert (PACKAGE_ROOT / f"{node.module}.py").exists(), f"{module.name} imports {node.module}"


def test_published_code_is_the_model_alone(saved):
    """Every code file of a saved folder (the inlined root pipeline file and component files) defines and uses no
    name of the tooling subpackages."""
    folder, _, _ = saved
    tooling = tooling_names()
    assert {"inline_relative_imports", "write_hub_code", "build_world_dataset", "train_stages"} <= tooling
    line_counts = {}
    for code in sorted(folder.rglob("*.py")):
        source = code.read_text()
        used = {node.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Name)}
        defined = {
            node.name
            for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        }
        assert not (used | defined) & tooling, f"{code.relative_to(folder)}: {sorted((used | defined) & tooling)}"
        line_counts[code.relative_to(folder).as_posix()] = len(source.splitlines())
    print("published line counts:", line_counts)
    assert set(line_counts) == {
        "pipeline_veltrix.py",
        "encoder/modeling_veltrix_encoder.py",
        "evolver/modeling_veltrix_evolver.py",
        "decoder/modeling_veltrix_decoder.py",
    }
