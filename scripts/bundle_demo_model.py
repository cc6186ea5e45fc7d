"""Copy one variant of an exported model folder into the bundled demo model folder.

    python scripts/bundle_demo_model.py RUN/model [--variant _q4] [--out edge_agent/demo/shelf-florence2]

RUN/model is what `edge-agent models finetune` (or `models export --from RUN/checkpoint` and
`models quantize`) wrote.  The JSON configs, the tokenizer files and the variant's graphs (with
their external data) are copied; the other variants are left out, so that the bundled folder
stays small.  Then the folder is verified (`edge-agent models verify`).  The folder's README.md
is kept: it is written by hand (what was trained, how, and what it scored).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from edge_agent.models.modeldir import FAST_PARTS, TOKENIZER_FILES, external_data, part_file, verify
from edge_agent.models.variants import PARTS

CONFIGS = ("config.json", "generation_config.json", "preprocessor_config.json")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "edge_agent" / "demo" / "shelf-florence2"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--variant", default="_q4")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args(argv)
    onnx = a.out / "onnx"
    if onnx.exists():
        shutil.rmtree(onnx)
    onnx.mkdir(parents=True)
    for name in CONFIGS + TOKENIZER_FILES:
        if (a.model / name).is_file():
            shutil.copy2(a.model / name, a.out / name)
    total = 0
    for part in PARTS + FAST_PARTS:
        src = part_file(a.model, part, a.variant)
        for f in (src, external_data(src)):
            if f.is_file():
                shutil.copy2(f, onnx / f.name)
                total += f.stat().st_size
    for line in verify(a.out, a.variant):
        print(line)
    print(f"{a.out}: graphs {total / 1e6:.1f} MB; folder "
          f"{sum(p.stat().st_size for p in a.out.rglob('*') if p.is_file()) / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
