"""The library packages (models/, tiling/) stand alone: importing every one of their modules in a
fresh interpreter loads neither click nor any edge_agent module (the CLI maps their errors onto
exit statuses, never the other way round)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edge_agent import models
from edge_agent import tiling

ROOT = Path(__file__).resolve().parent.parent

IMPORT_ALL = """
import importlib, json, pkgutil, sys
imported = []
for name in sys.argv[1:]:
    pkg = importlib.import_module(name)
    imported.append(pkg.__name__)
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(m.name)
        imported.append(m.name)
print(json.dumps({"imported": imported, "loaded": sorted(sys.modules)}))
"""


def _source_modules(pkg) -> set[str]:
    folder = Path(pkg.__file__).parent
    return {pkg.__name__} | {f"{pkg.__name__}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"}


def test_library_modules_load_neither_click_nor_edge_agent():
    libraries = (models.__name__, tiling.__name__)
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL, *libraries], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(out["imported"]) == _source_modules(models) | _source_modules(tiling)  # every module, no extras
    loaded = out["loaded"]
    assert "click" not in loaded and not any(m.startswith("click.") for m in loaded)
    # Installed inside the edge_agent namespace, the libraries' (empty) parent package is allowed.
    allowed = {lib.rpartition(".")[0] for lib in libraries} - {""}
    cli_side = [m for m in loaded if (m == "edge_agent" or m.startswith("edge_agent.")) and m not in allowed
                and not any(m == lib or m.startswith(lib + ".") for lib in libraries)]
    assert cli_side == []
