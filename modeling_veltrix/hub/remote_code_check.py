"""Runs Python code the way a Hub user without this package would: in a fresh process, from a folder outside the
repository, without `PYTHONPATH`, with its own cache of remote-code modules, and with `import modeling_veltrix`
failing (an editable install would otherwise still import it). The demo and the tests prove with it that a saved
pipeline folder loads with `trust_remote_code=True` alone.
"""

import os
import subprocess
import sys

# Put in front of the code: a meta-path finder that fails every import of the package, then a check that it does.
BLOCK_PACKAGE_PRELUDE = '''\
import importlib
import sys


class _BlockVeltrixPackage:
    """Fails `import modeling_veltrix` (and its submodules) before any other finder can resolve it."""

    def find_spec(self, name, path=None, target=None):
        if name == "modeling_veltrix" or name.startswith("modeling_veltrix."):
            raise ImportError(f"{name} is blocked: this process loads Veltrix folders without the package")
        return None


sys.meta_path.insert(0, _BlockVeltrixPackage())
try:
    importlib.import_module("modeling_veltrix")
except ImportError:
    pass
else:
    sys.exit("modeling_veltrix was importable although it is blocked")
'''


def run_without_package(
    code: str, args: list[str], workdir: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Runs `code` (with `sys.argv[1:] == args`) in a fresh Python process in `workdir`, where `modeling_veltrix`
    cannot be imported. The process is offline (`HF_HUB_OFFLINE=1`) unless `env` says otherwise, and keeps its
    remote-code modules in `<workdir>/hf_modules`. Returns the completed process (stdout and stderr as text)."""
    os.makedirs(workdir, exist_ok=True)
    process_env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    process_env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=os.path.join(workdir, "hf_modules"))
    process_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", BLOCK_PACKAGE_PRELUDE + code, *args],
        cwd=workdir,
        env=process_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
