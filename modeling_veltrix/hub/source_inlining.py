"""Flattens a module of this package, together with every module it reaches through single-dot relative imports
(`from .x import y`), into one self-contained Python source.

Why: a saved Veltrix folder must load where this package is not installed. transformers' remote-code loader copies
a class's file and the files of its relative imports, but diffusers copies no code and, from the Hub, fetches only
`<component>/<module>.py` and the root pipeline file, so each of those files must stand alone.

The flattening keeps every statement and comment of every module, in dependency order (a module after the modules it
imports), and removes only the relative imports themselves. `from .x import a as b` becomes `b = a`. Module
docstrings and `__all__` of the inlined dependencies are dropped; `from __future__` imports must agree across the
modules and move to the top. When two modules define the same top-level name, the first keeps it and the later ones
rename theirs, with every use inside that module, to `_<module>__<name>`: after flattening, one global namespace holds
them all.
"""

import ast
import os
import re
from dataclasses import dataclass, field

# What transformers' and diffusers' loaders take for a relative import (a regular expression over the lines).
LOADER_RELATIVE_IMPORT = re.compile(r"^\s*(?:from\s+\.|import\s+\.)", flags=re.MULTILINE)


@dataclass
class _Module:
    """One parsed source module: its lines, syntax tree and what the flattening changes in it."""

    name: str
    path: str
    source: str
    tree: ast.Module
    imports: list[ast.ImportFrom] = field(default_factory=list)  # its top-level single-dot relative imports
    renames: dict[str, str] = field(default_factory=dict)  # top-level name -> new name

    @property
    def defined_names(self) -> list[str]:
        """Names that the module's top-level statements define (functions, classes, assignments)."""
        names = []
        for node in self.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.append(node.name)
            elif isinstance(node, ast.Assign):
                names += [target.id for target in node.targets if isinstance(target, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.append(node.target.id)
        return [name for name in names if name != "__all__"]


def _parse(path: str) -> _Module:
    with open(path, encoding="utf-8") as handle:
        source = handle.read()
    module = _Module(os.path.splitext(os.path.basename(path))[0], path, source, ast.parse(source, filename=path))
    top_level = {id(node) for node in module.tree.body}
    for node in ast.walk(module.tree):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        if node.level > 1 or node.module is None or "." in node.module or id(node) not in top_level:
            raise ValueError(
                f"{path}:{node.lineno}: only top-level `from .module import name` imports can be inlined "
                f"(the Hub loaders copy modules flat), got `{ast.unparse(node)}`."
            )
        if any(alias.name == "*" for alias in node.names):
            raise ValueError(f"{path}:{node.lineno}: `from .{node.module} import *` cannot be inlined.")
        module.imports.append(node)
    return module


def _collect(path: str) -> list[_Module]:
    """The module at `path` and its relative imports, dependencies first (depth-first post-order)."""
    folder, ordered, visiting, done = os.path.dirname(os.path.abspath(path)), [], [], {}

    def visit(module_path: str) -> None:
        if module_path in done:
            return
        if module_path in visiting:
            cycle = " -> ".join(os.path.basename(p) for p in visiting[visiting.index(module_path) :] + [module_path])
            raise ValueError(f"Relative imports form a cycle, which cannot be inlined: {cycle}.")
        visiting.append(module_path)
        module = _parse(module_path)
        for node in module.imports:
            dependency = os.path.join(folder, f"{node.module}.py")
            if not os.path.isfile(dependency):
                raise ValueError(f"{module_path}:{node.lineno}: `.{node.module}` is not a file next to it.")
            visit(dependency)
        visiting.pop()
        done[module_path] = module
        ordered.append(module)

    visit(os.path.abspath(path))
    return ordered


def _assign_renames(modules: list[_Module]) -> None:
    """The first module to define a top-level name keeps it; later definers rename theirs."""
    owner: dict[str, str] = {}
    for module in modules:
        for name in dict.fromkeys(module.defined_names):
            if name in owner and owner[name] != module.name:
                module.renames[name] = f"_{module.name}__{name}"
            else:
                owner.setdefault(name, module.name)
    by_name = {module.name: module for module in modules}
    for module in modules:
        for node in module.imports:
            for alias in node.names:
                if alias.name in by_name[node.module].renames:
                    raise ValueError(
                        f"{module.path}:{node.lineno}: `{alias.name}` is defined by several inlined modules and "
                        f"imported from `.{node.module}`, which must rename its copy; give the two different names."
                    )


def _name_positions(module: _Module, name: str) -> list[tuple[int, int]]:
    """(line, byte column) of every binding or use of the bare `name` in `module` (attributes excluded)."""
    lines, positions = module.source.splitlines(), []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Name) and node.id == name:
            positions.append((node.lineno, node.col_offset))
        elif isinstance(node, ast.arg) and node.arg == name:
            positions.append((node.lineno, node.col_offset))
        elif isinstance(node, ast.keyword) and node.arg == name:
            positions.append((node.lineno, node.col_offset))
        elif isinstance(node, (ast.Global, ast.Nonlocal)) and name in node.names:
            raise ValueError(f"{module.path}:{node.lineno}: cannot rename `{name}`, which a `global` names.")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            line = lines[node.lineno - 1].encode()
            match = re.compile(rb"(?:async\s+)?(?:def|class)\s+").match(line, node.col_offset)
            positions.append((node.lineno, match.end()))
    return positions


def _renamed_lines(module: _Module) -> list[str]:
    """The module's lines with its renames applied (byte columns, since `ast` counts UTF-8 bytes)."""
    lines = [line.encode() for line in module.source.splitlines()]
    edits = sorted(
        ((line, column, name) for name in module.renames for line, column in _name_positions(module, name)),
        reverse=True,
    )
    for line, column, name in edits:
        text = lines[line - 1]
        if text[column : column + len(name.encode())] != name.encode():
            raise ValueError(f"{module.path}:{line}: expected `{name}` at column {column}.")
        lines[line - 1] = text[:column] + module.renames[name].encode() + text[column + len(name.encode()) :]
    return [line.decode() for line in lines]


def _docstring_node(tree: ast.Module) -> ast.stmt | None:
    first = tree.body[0] if tree.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first
    return None


def _body(module: _Module, is_main: bool, renames_of: dict[str, dict[str, str]]) -> tuple[str, list[str]]:
    """The module's text without its docstring, relative and `__future__` imports (nor, for a dependency, its
    `__all__`), and its `__future__` imports."""
    lines = _renamed_lines(module)
    replacements: dict[int, list[str]] = {}  # first line (0-based) -> replacement lines; the statement is removed
    futures = []
    for node in module.tree.body:
        drop = node in module.imports
        if isinstance(node, ast.ImportFrom) and node.module == "__future__" and node.level == 0:
            futures.append(ast.unparse(node))
            drop = True
        if node is _docstring_node(module.tree):
            drop = True
        if (
            not is_main
            and isinstance(node, ast.Assign)
            and any(isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets)
        ):
            drop = True
        if not drop:
            continue
        start = (node.decorator_list[0] if getattr(node, "decorator_list", None) else node).lineno - 1
        aliases = []
        if node in module.imports:
            source_renames = renames_of[node.module]
            for alias in node.names:
                target = alias.asname or alias.name
                value = source_renames.get(alias.name, alias.name)
                if target != value:
                    aliases.append(f"{target} = {value}")
        replacements[start] = aliases
        for line in range(start + 1, node.end_lineno):
            replacements[line] = []
    body = []
    for index, line in enumerate(lines):
        if index in replacements:
            body.extend(replacements[index])
        else:
            body.append(line)
    return "\n".join(body).strip("\n"), futures


def inline_relative_imports(path: str) -> str:
    """One self-contained source equivalent to the module at `path` and its single-dot relative imports.

    Raises `ValueError` for what cannot be flattened: relative imports other than top-level `from .x import y`,
    import cycles, names imported from a module that had to rename them, disagreeing `__future__` imports.
    """
    modules = _collect(path)
    _assign_renames(modules)
    renames_of = {module.name: module.renames for module in modules}
    *dependencies, main = modules
    sections, future_sets = [], {}
    for module in dependencies:
        body, future_sets[module.name] = _body(module, False, renames_of)
        sections.append(f"# ---- inlined from {module.name}.py ----\n{body}")
    main_body, future_sets[main.name] = _body(main, True, renames_of)
    futures = future_sets[main.name]
    if len(set(map(tuple, future_sets.values()))) > 1:
        raise ValueError(f"The inlined modules disagree on `from __future__` imports: {future_sets}.")
    docstring = _docstring_node(main.tree)
    header = []
    if docstring is not None:
        header.append(ast.get_source_segment(main.source, docstring))
    header += futures
    generated = f"# Generated from {', '.join(f'{m.name}.py' for m in modules)} by the Veltrix source inliner."
    text = "\n\n".join([*header, generated, *sections, f"# ---- {main.name}.py ----\n{main_body}"]) + "\n"
    ast.parse(text, filename=f"<inlined {main.name}.py>")
    match = LOADER_RELATIVE_IMPORT.search(text)
    if match:
        line = text.count("\n", 0, match.start()) + 1
        raise ValueError(
            f"Line {line} of the inlined {main.name}.py reads as a relative import to the Hub loaders (their check is "
            f"a regular expression over lines, docstrings included): {text.splitlines()[line - 1]!r}."
        )
    return text
