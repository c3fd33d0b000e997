"""The Hub export of a saved `VeltrixPipeline`: the code files that make one folder a self-contained Hugging Face
repository for every loader, flattened so that each file stands alone (see `source_inlining`).

`setup.py` declares `write_hub_code` as an entry point of the group `veltrix.repository_writers`, so
`save_pretrained` of the installed package adds, on top of what `DiffusionPipeline.save_pretrained` writes, each
component's code file and `auto_map`, the root pipeline file, the code references of `model_index.json` and the root
`config.json` (the layout is described in `modeling_veltrix.repository_check`). Weights are written once, in the
component folders; the root holds code and configuration only.
"""

import inspect
import os

from transformers import PreTrainedModel

from ..pipeline_world_rollout import TASK, VeltrixWorldConfig, VeltrixWorldRolloutPipeline
from ..repository_check import FORMAT_KEY, HUB_FORMAT, LIBRARIES, MODEL_INDEX, read_json, write_json_atomic
from .source_inlining import inline_relative_imports


def module_name(cls: type) -> str:
    """The file name (without `.py`) under which `cls`'s code is saved: the last part of its module's name."""
    return cls.__module__.rsplit(".", 1)[-1]


def is_library_class(cls: type) -> bool:
    """Whether `cls` comes with diffusers or transformers (its code is not saved)."""
    return cls.__module__.split(".")[0] in LIBRARIES


def write_hub_code(pipeline, folder: str) -> None:
    """Adds the self-contained code files, `auto_map`s, the root `config.json` and the code references of
    `model_index.json` to `folder`, which `DiffusionPipeline.save_pretrained` has just written for `pipeline`."""
    root = module_name(type(pipeline))
    code_files = {root: os.path.join(folder, f"{root}.py")}
    index_path = os.path.join(folder, MODEL_INDEX)
    index = read_json(index_path)
    for name, component in pipeline.components.items():
        if component is None or is_library_class(type(component)):
            continue
        cls = type(component)
        module = module_name(cls)
        if module in code_files:
            raise ValueError(
                f"The code of component `{name}` would be saved as {module}.py, a name already taken by "
                f"{code_files[module]}: the Hub loaders keep the code of all components in one namespace."
            )
        component_folder = os.path.join(folder, name)
        code_files[module] = os.path.join(component_folder, f"{module}.py")
        for stale in os.listdir(component_folder):  # what transformers copied for its own remote-code loader
            if stale.endswith(".py"):
                os.remove(os.path.join(component_folder, stale))
        with open(code_files[module], "w", encoding="utf-8") as handle:
            handle.write(inline_relative_imports(inspect.getfile(cls)))
        if isinstance(component, PreTrainedModel):
            config_path = os.path.join(component_folder, "config.json")
            config = read_json(config_path)
            config["auto_map"] = {
                "AutoConfig": f"{module}.{type(component.config).__name__}",
                "AutoModel": f"{module}.{cls.__name__}",
            }
            write_json_atomic(config_path, config)
        index[name] = [module, cls.__name__]
    with open(code_files[root], "w", encoding="utf-8") as handle:
        handle.write(inline_relative_imports(inspect.getfile(type(pipeline))))
    index["_class_name"] = [root, type(pipeline).__name__]
    index[FORMAT_KEY] = HUB_FORMAT
    write_json_atomic(index_path, index)
    world = VeltrixWorldConfig()
    world.auto_map = {"AutoConfig": f"{root}.VeltrixWorldConfig", "AutoModel": f"{root}.VeltrixWorldModel"}
    world.custom_pipelines = {
        TASK: {"impl": f"{root}.{VeltrixWorldRolloutPipeline.__name__}", "pt": ["AutoModel"], "type": "video"}
    }
    world.save_pretrained(folder)
