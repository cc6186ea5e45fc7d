#!/usr/bin/env python3
"""Write a seeded synthetic shelf data set (models/synth.py): JPEG frames and one COCO file
with <OD> objects (box, can, bottle, bag) and <OCR_WITH_REGION> price lines.

    python scripts/synth_shelves.py /tmp/shelves --count 2000 --size 768 --seed 0
    python scripts/synth_shelves.py /tmp/dense --count 20 --width 1920 --height 1080 --objects 400

Needs Pillow and a TrueType font (the font-roboto wheel of the [train] extra, or --font).
Write data sets outside the repository: they are not committed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_agent.models.errors import ModelError  # noqa: E402
from edge_agent.models.synth import ShelfOptions, write_dataset  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output folder (images/ and annotations.json)")
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, help="square frames of this side (sets --width and --height)")
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--objects", type=int, help="about this many objects per frame (dense: 200-800)")
    ap.add_argument("--no-tags", action="store_true", help="no price tags")
    ap.add_argument("--occlusion", type=float, default=0.3)
    ap.add_argument("--lighting", type=float, default=0.35)
    ap.add_argument("--blur", type=float, default=1.2)
    ap.add_argument("--font", help="a TrueType file for the price tags")
    a = ap.parse_args(argv)
    try:
        opts = ShelfOptions(width=a.size or a.width, height=a.size or a.height, objects=a.objects,
                            tags=not a.no_tags, occlusion=a.occlusion, lighting=a.lighting, blur=a.blur, font=a.font)
    except ValueError as exc:
        print(f"synth_shelves: error: {exc}", file=sys.stderr)
        return 2
    try:
        path = write_dataset(a.out, a.count, a.seed, opts,
                             progress=lambda n: print(f"\r{n}/{a.count}", end="", file=sys.stderr, flush=True))
    except ModelError as exc:
        print(f"\nsynth_shelves: error: {exc}", file=sys.stderr)
        return 2
    print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
