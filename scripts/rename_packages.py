#!/usr/bin/env python3
"""Install the library packages inside edge-agent's namespace: `models` -> `edge_agent.models`,
`tiling` -> `edge_agent.tiling` (docs/ARCHITECTURE.md, "Packaging").

PyPI's `models` (0.9.3) and `tiling` (0.3.0) distributions install the same top-level names;
installed beside one of them, edge-agent's `models` or `tiling` would be overwritten (or
overwrite theirs).  The source folders stay where they are (models/, tiling/ at the top of the
repository); setuptools' `package-dir` maps them into the edge_agent package.

This script does the whole switch, once, in a clean working tree:

1. pyproject.toml: explicit packages with `package-dir`, package data re-keyed;
2. every Python file of the repository (edge_agent/, models/, tiling/, tests/, benchmarks/,
   scripts/): `from models... import` / `from tiling... import` -> `from edge_agent.models... import`,
   `import models.x as y` -> `import edge_agent.models.x as y`, and a bare `import models` /
   `import models.x` -> `from edge_agent import models` (plus `import edge_agent.models.x`),
   also inside code held in strings (subprocess scripts);
3. prints what it changed.  Then reinstall (`pip install -e '.[test]'`) and run the tests.

    python scripts/rename_packages.py [--check]     (--check: list the changes, write nothing)
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBS = ("models", "tiling")
FOLDERS = ("edge_agent", "models", "tiling", "tests", "benchmarks", "scripts")
SKIP_PARTS = {".venv", "build", "dist", "__pycache__", ".git", "demo", "fixtures-data"}

_LIB = "|".join(LIBS)
FROM_RE = re.compile(rf"^(?P<indent>[ \t]*)from (?P<lib>{_LIB})(?P<sub>(?:\.\w+)*) import ", re.M)
IMPORT_AS_RE = re.compile(rf"^(?P<indent>[ \t]*)import (?P<lib>{_LIB})(?P<sub>(?:\.\w+)*) as (?P<alias>\w+)[ \t]*$", re.M)
IMPORT_RE = re.compile(rf"^(?P<indent>[ \t]*)import (?P<names>(?:{_LIB})(?:\.\w+)*(?:[ \t]*,[ \t]*(?:{_LIB})(?:\.\w+)*)*)"
                       r"(?P<rest>[ \t]*(?:#.*)?)$", re.M)


def rewrite_imports(text: str) -> str:
    text = FROM_RE.sub(lambda m: f"{m['indent']}from edge_agent.{m['lib']}{m['sub']} import ", text)
    text = IMPORT_AS_RE.sub(lambda m: f"{m['indent']}import edge_agent.{m['lib']}{m['sub']} as {m['alias']}", text)

    def bare(m: re.Match) -> str:
        names = [n.strip() for n in m["names"].split(",")]
        lines, bound = [], []
        for name in names:
            lib = name.split(".")[0]
            if "." in name:
                lines.append(f"{m['indent']}import edge_agent.{name}  # noqa: F401")
            if lib not in bound:
                bound.append(lib)
        lines += [f"{m['indent']}from edge_agent import {lib}{m['rest']}" for lib in bound]
        return "\n".join(lines)

    return IMPORT_RE.sub(bare, text)


def rewrite_pyproject(text: str) -> str:
    old_find = re.search(r"\[tool\.setuptools\.packages\.find\]\ninclude = \[[^\]]*\]\n", text)
    if old_find is None:
        raise SystemExit("pyproject.toml: no [tool.setuptools.packages.find] include = [...] table to replace")
    new = ("[tool.setuptools]\n"
           "# The library packages install inside edge_agent's namespace (PyPI's `models` and `tiling`\n"
           "# distributions use those top-level names); their source folders stay at the top.\n"
           'packages = ["edge_agent", "edge_agent.models", "edge_agent.tiling"]\n\n'
           "[tool.setuptools.package-dir]\n"
           '"edge_agent" = "edge_agent"\n"edge_agent.models" = "models"\n"edge_agent.tiling" = "tiling"\n')
    text = text[:old_find.start()] + new + text[old_find.end():]
    text = re.sub(r"(?m)^models = \[", '"edge_agent.models" = [', text)
    return text


def python_files():
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if not SKIP_PARTS & set(path.relative_to(ROOT).parts):
                yield path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only list the files that would change")
    args = ap.parse_args(argv)
    changed = []
    pyproject = ROOT / "pyproject.toml"
    text = pyproject.read_text()
    if '"edge_agent.models" = "models"' in text:
        print("pyproject.toml already maps edge_agent.models; nothing to do", file=sys.stderr)
        return 1
    new = rewrite_pyproject(text)
    changed.append((pyproject, text, new))
    for path in python_files():
        text = path.read_text(encoding="utf-8")
        new = rewrite_imports(text)
        if new != text:
            changed.append((path, text, new))
    for path, old, new in changed:
        n = sum(1 for a, b in zip(old.splitlines(), new.splitlines()) if a != b) or 1
        print(f"{path.relative_to(ROOT)}: {n} line(s)")
        if not args.check:
            path.write_text(new, encoding="utf-8")
    print(f"{len(changed)} file(s) {'would change' if args.check else 'changed'}; now: pip install -e '.[test]' "
          "and python -m pytest", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
