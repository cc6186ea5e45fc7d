"""COCO detection JSON as training and evaluation data for both Florence-2 tasks.

DATA is a COCO file, or a folder holding `annotations.json`; image `file_name`s are relative to
the file's folder.  An annotation with a `text` field is an OCR line (`<OCR_WITH_REGION>`): its
quad is `segmentation[0]` when that is 4 points (x1,y1,…,x4,y4, clockwise from the top-left),
else its bbox.  Every other annotation is an object (`<OD>`) labelled with its category's name.
Boxes are clipped to the image; crowd and empty boxes are skipped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.models.errors import ModelError, ModelSettingError
from edge_agent.models.targets import quad_from_box


@dataclass(frozen=True)
class Sample:
    image_id: int
    path: Path
    width: int
    height: int
    objects: tuple[tuple[str, tuple[float, float, float, float]], ...] = ()  # (label, x0 y0 x1 y1)
    lines: tuple[tuple[str, tuple[float, ...]], ...] = ()  # (text, quad)

    def load(self) -> np.ndarray:
        """RGB uint8 pixels."""
        from PIL import Image

        try:
            with Image.open(self.path) as im:
                return np.asarray(im.convert("RGB"))
        except OSError as exc:
            raise ModelSettingError(f"{self.path}: cannot read image: {exc}") from None


@dataclass
class Dataset:
    file: Path
    samples: list[Sample]
    categories: dict[int, str] = field(default_factory=dict)
    coco: dict = field(default_factory=dict)  # the parsed JSON, for pycocotools

    def subset(self, image_ids) -> "Dataset":
        keep = set(image_ids)
        return Dataset(self.file, [s for s in self.samples if s.image_id in keep], self.categories, self.coco)


def annotations_file(data) -> Path:
    p = Path(data)
    if p.is_dir():
        p = p / "annotations.json"
    if not p.is_file():
        raise ModelSettingError(f"{p}: not found (DATA is a COCO JSON file or a folder with annotations.json)")
    return p


def load_dataset(data) -> Dataset:
    file = annotations_file(data)
    try:
        coco = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"{file}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise ModelSettingError(f"{file}: not JSON: {exc}") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise ModelSettingError(f"{file}: not a COCO file (no 'images' list)")
    cats = {}
    for c in coco.get("categories", []):
        try:
            cats[int(c["id"])] = str(c["name"])
        except (KeyError, TypeError, ValueError):
            raise ModelSettingError(f"{file}: category {c!r}: needs an integer 'id' and a 'name'") from None
    objects: dict[int, list] = {}
    lines: dict[int, list] = {}
    sizes = {}
    for im in coco["images"]:
        try:
            sizes[int(im["id"])] = (int(im["width"]), int(im["height"]), str(im["file_name"]))
        except (KeyError, TypeError, ValueError):
            raise ModelSettingError(f"{file}: image {im!r}: needs 'id', 'file_name', 'width' and 'height'") from None
    for a in coco.get("annotations", []):
        try:
            image_id, (x, y, w, h) = int(a["image_id"]), (float(v) for v in a["bbox"])
        except (KeyError, TypeError, ValueError):
            raise ModelSettingError(f"{file}: annotation {a.get('id', '?')}: needs 'image_id' and a 4-number 'bbox'") from None
        if image_id not in sizes:
            raise ModelSettingError(f"{file}: annotation {a.get('id', '?')}: unknown image_id {image_id}")
        W, H, _ = sizes[image_id]
        box = (max(0.0, x), max(0.0, y), min(float(W), x + w), min(float(H), y + h))
        if a.get("iscrowd") or box[2] <= box[0] or box[3] <= box[1]:
            continue
        if "text" in a:
            seg = a.get("segmentation")
            quad = seg[0] if isinstance(seg, list) and seg and isinstance(seg[0], list) and len(seg[0]) == 8 else None
            quad = [min(max(0.0, float(v)), float(W if i % 2 == 0 else H)) for i, v in enumerate(quad)] if quad \
                else quad_from_box(box)
            lines.setdefault(image_id, []).append((str(a["text"]), tuple(quad)))
        else:
            try:
                label = cats[int(a["category_id"])]
            except (KeyError, TypeError, ValueError):
                raise ModelSettingError(f"{file}: annotation {a.get('id', '?')}: unknown category_id "
                                        f"{a.get('category_id')!r}") from None
            objects.setdefault(image_id, []).append((label, box))
    samples = [Sample(i, file.parent / name, W, H, tuple(objects.get(i, ())), tuple(lines.get(i, ())))
               for i, (W, H, name) in sizes.items()]
    return Dataset(file, samples, cats, coco)


def split(samples: list[Sample], heldout: float, seed: int) -> tuple[list[int], list[int]]:
    """(train ids, held-out ids): a seeded shuffle of the images, the last `heldout` share held
    out (at least one image when there are two or more)."""
    ids = sorted(s.image_id for s in samples)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_held = 0 if heldout <= 0 or len(ids) < 2 else max(1, round(len(ids) * heldout))
    held = sorted(ids[i] for i in order[len(ids) - n_held:])
    train = sorted(ids[i] for i in order[:len(ids) - n_held])
    return train, held
