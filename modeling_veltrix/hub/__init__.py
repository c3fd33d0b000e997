"""Publishing: the Hub export that makes a saved pipeline folder a self-contained repository (`export`, with the
source inliner), the published bundles of `pipelines/` (`bundle`), the model card (`model_card`) and the check that a
folder loads where the package is not installed (`remote_code_check`)."""

from .bundle import BUNDLE_FILE, VeltrixBundle, assemble_repository
from .export import write_hub_code
from .model_card import render_model_card, save_model_card, validate_model_card
from .remote_code_check import run_without_package
from .source_inlining import inline_relative_imports

__all__ = [
    "BUNDLE_FILE",
    "VeltrixBundle",
    "assemble_repository",
    "inline_relative_imports",
    "render_model_card",
    "run_without_package",
    "save_model_card",
    "validate_model_card",
    "write_hub_code",
]
