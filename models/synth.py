"""Seeded synthetic retail shelves with COCO annotations for both Florence-2 tasks.

    frame = render_shelf(ShelfOptions(width=768, height=768), seed=3)
    frame.image            # HxWx3 uint8 RGB
    frame.objects          # [SynthObject(label="can", box=(x0, y0, x1, y1)), ...]   -> <OD>
    frame.lines            # [SynthLine(text="$2.99", quad=(x1, y1, ..., x4, y4)), ...] -> <OCR_WITH_REGION>
    write_dataset("out/", count=100, seed=0, options=ShelfOptions())   # out/images/*.jpg, out/annotations.json

Products are drawn by shape (box, can, bottle, bag) in runs of facings of one product with a
price tag on the shelf edge under each run: prices in several formats (`$2.99`, `2,49 €`,
`2 FOR $5`, `3/$10`, `£1.50`, `$0.89/lb`), rendered in Roboto (the `font-roboto` wheel, or
a font named by `ShelfOptions.font`).  Occlusion (neighbouring products overlapping, and
occluders in front), uneven lighting, sensor noise and blur are applied per frame.

Boxes are the visible extent of each object, measured on an instance map drawn alongside the
image, so they always lie inside the frame; objects less than `min_visible` visible are left
out, and a price line is annotated only when none of it is occluded.  The same seed and
options give the same pixels and annotations.

COCO layout: categories box, can, bottle, bag (for `<OD>`) and text (`<OCR_WITH_REGION>`:
`text` field, `segmentation` [[x1,y1,...,x4,y4]] clockwise from the top-left, and the bbox).
"""
from __future__ import annotations

import colorsys
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.models.errors import ModelError, ModelSettingError

SHAPES = ("box", "can", "bottle", "bag")
TEXT_CATEGORY = "text"
CATEGORIES = SHAPES + (TEXT_CATEGORY,)
FONT_FALLBACKS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
                  "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


@dataclass(frozen=True)
class ShelfOptions:
    width: int = 768
    height: int = 768
    # Objects per frame: None draws shelf rows of natural size (2-4 rows, roughly 8-40
    # products); a number sizes rows and products so that about that many are drawn (the
    # dense frames of the tiling benchmark use 200-800).
    objects: int | None = None
    tags: bool = True  # price tags on the shelf edges
    occlusion: float = 0.3  # chance per frame of occluders in front; neighbours overlap at this rate too
    lighting: float = 0.35  # strength of the brightness gradient and colour cast, 0..1
    blur: float = 1.2  # largest Gaussian blur sigma in pixels (drawn uniformly from 0..blur)
    noise: float = 4.0  # sensor noise standard deviation, in 0-255 units
    min_visible: float = 0.4  # objects less visible than this are not annotated
    font: str | None = None  # a TrueType file; None: Roboto from font-roboto, else DejaVu
    quality: int = 90  # JPEG quality of write_dataset

    def __post_init__(self):
        if not (32 <= self.width <= 8192 and 32 <= self.height <= 8192):
            raise ValueError(f"width and height must be 32..8192 pixels, got {self.width}x{self.height}")
        if self.objects is not None and not 1 <= self.objects <= 5000:
            raise ValueError(f"objects must be 1..5000 or None, got {self.objects}")
        for name in ("occlusion", "lighting", "min_visible"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)}")
        if self.blur < 0 or self.noise < 0:
            raise ValueError("blur and noise must be >= 0")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be 1..100, got {self.quality}")


@dataclass(frozen=True)
class SynthObject:
    label: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 (visible extent, pixels)


@dataclass(frozen=True)
class SynthLine:
    text: str
    quad: tuple[float, ...]  # x1, y1, x2, y2, x3, y3, x4, y4 clockwise from the top-left

    @property
    def box(self) -> tuple[float, float, float, float]:
        xs, ys = self.quad[0::2], self.quad[1::2]
        return min(xs), min(ys), max(xs), max(ys)


@dataclass
class ShelfFrame:
    image: np.ndarray
    objects: list[SynthObject] = field(default_factory=list)
    lines: list[SynthLine] = field(default_factory=list)


def find_font(path: str | None = None) -> str:
    """The TrueType file price tags are drawn with: `path`, else Roboto Bold from the font-roboto
    wheel, else DejaVu Sans from Debian's fonts-dejavu-core."""
    if path:
        if not Path(path).is_file():
            raise ModelSettingError(f"font {path}: not found")
        return str(path)
    try:
        import font_roboto

        bold = Path(font_roboto.font_directory) / "Roboto-Bold.ttf"
        if bold.is_file():
            return str(bold)
    except ImportError:
        pass
    for cand in FONT_FALLBACKS:
        if Path(cand).is_file():
            return cand
    raise ModelError("no TrueType font for price tags: pip install 'edge-agent[train]' (font-roboto), "
                     "or apt-get install fonts-dejavu-core")


class _Fonts:
    def __init__(self, path: str):
        self.path = path
        self._cache: dict[int, object] = {}

    def __call__(self, size: int):
        from PIL import ImageFont

        size = max(6, int(size))
        if size not in self._cache:
            self._cache[size] = ImageFont.truetype(self.path, size)
        return self._cache[size]


def price_text(rng: np.random.Generator) -> str:
    """One price in one of the formats seen on shelf tags."""
    cents = int(rng.integers(19, 1999))
    whole, frac = divmod(cents, 100)
    kind = int(rng.integers(0, 8))
    if kind == 0:
        return f"${whole}.{frac:02d}"
    if kind == 1:
        return f"{whole},{frac:02d} €"
    if kind == 2:
        n = int(rng.integers(2, 5))
        return f"{n} FOR ${int(rng.integers(n, 4 * n + 1))}"
    if kind == 3:
        n = int(rng.integers(2, 4))
        return f"{n}/${int(rng.integers(n + 1, 5 * n))}"
    if kind == 4:
        return f"£{whole}.{frac:02d}"
    if kind == 5:
        return f"€{whole}.{frac:02d}"
    if kind == 6:
        return f"${whole}.{frac:02d}/lb"
    return f"{whole}.{frac:02d}"


def _colour(rng: np.random.Generator, sat=(0.45, 0.95), val=(0.45, 0.95)) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(float(rng.random()), float(rng.uniform(*sat)), float(rng.uniform(*val)))
    return int(r * 255), int(g * 255), int(b * 255)


def _shade(c, f: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, v * f))) for v in c)


class _Canvas:
    """The RGB picture and the instance map (object index + 1 per pixel, 0 = background) drawn together."""

    def __init__(self, w: int, h: int, background):
        from PIL import Image, ImageDraw

        self.img = Image.new("RGB", (w, h), background)
        self.ids = Image.new("I", (w, h), 0)
        self.draw = ImageDraw.Draw(self.img)
        self.idraw = ImageDraw.Draw(self.ids)

    def rect(self, box, fill, ident: int | None):
        self.draw.rectangle(box, fill=fill)
        if ident is not None:
            self.idraw.rectangle(box, fill=ident)

    def ellipse(self, box, fill, ident: int | None):
        self.draw.ellipse(box, fill=fill)
        if ident is not None:
            self.idraw.ellipse(box, fill=ident)

    def polygon(self, pts, fill, ident: int | None):
        self.draw.polygon(pts, fill=fill)
        if ident is not None:
            self.idraw.polygon(pts, fill=ident)

    def rounded(self, box, r, fill, ident: int | None):
        self.draw.rounded_rectangle(box, radius=r, fill=fill)
        if ident is not None:
            self.idraw.rounded_rectangle(box, radius=r, fill=ident)


def _draw_product(cv: _Canvas, shape: str, x0, y0, x1, y1, colour, accent, ident: int, rng) -> None:
    w, h = x1 - x0, y1 - y0
    if shape == "box":
        cv.rect((x0, y0, x1, y1), colour, ident)
        cv.rect((x0, y0, x1, y0 + max(1, h * 0.06)), _shade(colour, 0.7), ident)
        band = y0 + h * rng.uniform(0.3, 0.55)
        cv.rect((x0, band, x1, band + h * 0.18), accent, ident)
        r = min(w, h) * 0.18
        cx, cy = x0 + w / 2, y0 + h * 0.22
        cv.ellipse((cx - r, cy - r, cx + r, cy + r), _shade(accent, 1.3), ident)
    elif shape == "can":
        e = max(2.0, w * 0.16)
        cv.rect((x0, y0 + e / 2, x1, y1 - e / 2), colour, ident)
        cv.ellipse((x0, y1 - e, x1, y1), _shade(colour, 0.8), ident)
        for k, f in enumerate((0.75, 0.88, 1.0, 1.12, 1.0, 0.85, 0.72)):  # cylinder shading
            sx0 = x0 + w * k / 7
            cv.rect((sx0, y0 + e / 2, sx0 + w / 7, y1 - e / 2), _shade(colour, f), None)
        cv.rect((x0, y0 + h * 0.35, x1, y0 + h * 0.62), accent, ident)
        cv.ellipse((x0, y0, x1, y0 + e), (190, 190, 195), ident)
    elif shape == "bottle":
        neck_w, neck_h = w * 0.34, h * 0.28
        cx = x0 + w / 2
        cv.rect((cx - neck_w / 2 * 0.8, y0, cx + neck_w / 2 * 0.8, y0 + h * 0.07), accent, ident)  # cap
        cv.rect((cx - neck_w / 2, y0 + h * 0.07, cx + neck_w / 2, y0 + neck_h), colour, ident)
        cv.polygon([(cx - neck_w / 2, y0 + neck_h), (cx + neck_w / 2, y0 + neck_h),
                    (x1, y0 + neck_h + h * 0.12), (x0, y0 + neck_h + h * 0.12)], colour, ident)
        cv.rounded((x0, y0 + neck_h + h * 0.1, x1, y1), max(1, w * 0.15), colour, ident)
        cv.rect((x0, y0 + h * 0.55, x1, y0 + h * 0.8), _shade(accent, 1.2), ident)
        cv.rect((x0 + w * 0.15, y0 + neck_h + h * 0.14, x0 + w * 0.25, y1 - h * 0.08), _shade(colour, 1.35), None)
    else:  # bag: a pillow with a crimped top
        teeth = max(3, int(w / 6))
        pts = [(x0 + w * 0.04, y0 + h * 0.08)]
        for k in range(teeth + 1):
            pts.append((x0 + w * 0.04 + (w * 0.92) * k / teeth, y0 + (0 if k % 2 else h * 0.04)))
        pts += [(x1 - w * 0.04, y0 + h * 0.08), (x1, y0 + h * 0.5), (x1 - w * 0.03, y1),
                (x0 + w * 0.03, y1), (x0, y0 + h * 0.5)]
        cv.polygon(pts, colour, ident)
        cv.rect((x0 + w * 0.04, y0 + h * 0.04, x1 - w * 0.04, y0 + h * 0.1), _shade(colour, 0.75), ident)
        r = min(w, h) * 0.25
        cx, cy = x0 + w / 2, y0 + h * 0.52
        cv.ellipse((cx - r, cy - r, cx + r, cy + r), accent, ident)


SHAPE_ASPECT = {"box": (0.55, 1.1), "can": (0.5, 0.75), "bottle": (0.3, 0.45), "bag": (0.65, 1.0)}


def render_shelf(options: ShelfOptions | None = None, seed: int = 0) -> ShelfFrame:
    """One frame: shelves of products with price tags, annotated.  Deterministic in (options, seed)."""
    from PIL import Image, ImageFilter

    opts = options or ShelfOptions()
    rng = np.random.default_rng(seed)
    fonts = _Fonts(find_font(opts.font))
    W, H = opts.width, opts.height
    cv = _Canvas(W, H, _colour(rng, sat=(0.0, 0.25), val=(0.55, 0.9)))
    if opts.objects:
        rows = max(1, round(math.sqrt(opts.objects * 0.41 * H / W)))
    else:
        rows = int(rng.integers(2, 5))
    row_h = H / rows
    board_h = max(4.0, row_h * 0.12)
    board = _colour(rng, sat=(0.0, 0.2), val=(0.35, 0.85))
    products: list[tuple[str, tuple, int]] = []  # (label, drawn box, instance id)
    tag_lines: list[tuple[str, tuple, int]] = []  # (text, quad, instance id)
    next_id = 1
    for r in range(rows):
        top, floor = r * row_h, (r + 1) * row_h - board_h
        # the shelf board, with its front edge where tags clip on
        cv.rect((0, floor, W, (r + 1) * row_h), board, None)
        cv.rect((0, floor, W, floor + max(1, board_h * 0.15)), _shade(board, 1.2), None)
        x = float(rng.uniform(0, row_h * 0.2))
        while x < W - 4:
            shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
            ph = (floor - top) * float(rng.uniform(0.55, 0.92))
            pw = ph * float(rng.uniform(*SHAPE_ASPECT[shape]))
            facings = int(rng.integers(1, 5))
            colour, accent = _colour(rng), _colour(rng)
            run_x0 = x
            for _ in range(facings):
                if x + pw > W:
                    break
                overlap = pw * 0.18 if rng.random() < opts.occlusion * 0.5 else 0.0
                x0 = x - overlap
                _draw_product(cv, shape, x0, floor - ph, x0 + pw, floor, colour, accent, next_id, rng)
                products.append((shape, (x0, floor - ph, x0 + pw, floor), next_id))
                next_id += 1
                x = x0 + pw + float(rng.uniform(0.02, 0.12)) * pw
            if opts.tags and x > run_x0 + 1:
                next_id = _draw_tag(cv, rng, fonts, price_text(rng), run_x0, x, floor, board_h, next_id, tag_lines)
            x += float(rng.uniform(0.0, 0.6)) * pw
    if rng.random() < opts.occlusion:
        _occluders(cv, rng, W, H)
    image = np.asarray(cv.img, dtype=np.float32)
    ids = np.asarray(cv.ids, dtype=np.int32)
    image = _light(image, rng, opts)
    img = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    sigma = float(rng.uniform(0, opts.blur)) if opts.blur > 0 else 0.0
    if sigma > 0.25:
        img = img.filter(ImageFilter.GaussianBlur(sigma))
    frame = ShelfFrame(np.ascontiguousarray(np.asarray(img)))
    frame.objects = _visible_objects(ids, products, opts.min_visible)
    frame.lines = _visible_lines(ids, tag_lines, W, H)
    return frame


def _draw_tag(cv: _Canvas, rng, fonts: _Fonts, text: str, x0: float, x1: float, floor: float,
              board_h: float, next_id: int, lines: list) -> int:
    """A tag on the shelf edge under a run of facings; its text line is registered in `lines`."""
    size = max(7, int(board_h * rng.uniform(0.6, 0.8)))
    font = fonts(size)
    l, t, r, b = font.getbbox(text)
    tw, th = r - l, b - t
    pad = max(2, size // 5)
    cx = (x0 + x1) / 2 + float(rng.uniform(-0.2, 0.2)) * max(0.0, (x1 - x0 - tw))
    tx, ty = cx - tw / 2, floor + (board_h - th) / 2
    bg = ((250, 250, 245), (255, 236, 80), (255, 255, 255), (250, 220, 120))[int(rng.integers(0, 4))]
    fg = ((15, 15, 15), (200, 20, 20), (20, 20, 120))[int(rng.integers(0, 3))]
    cv.rect((tx - pad, ty - pad / 2, tx + tw + pad, ty + th + pad / 2), bg, next_id)
    cv.draw.text((tx - l, ty - t), text, font=font, fill=fg)
    lines.append((text, (tx, ty, tx + tw, ty, tx + tw, ty + th, tx, ty + th), next_id))
    return next_id + 1


def _occluders(cv: _Canvas, rng, W: int, H: int) -> None:
    """Things in front of the shelf: a shopper's arm, a hanging sign, a trolley bar."""
    for _ in range(int(rng.integers(1, 3))):
        kind = int(rng.integers(0, 3))
        if kind == 0:
            x, w = float(rng.uniform(0, W)), float(rng.uniform(0.04, 0.1)) * W
            y = float(rng.uniform(0.3, 0.8)) * H
            skin = _shade((224, 172, 140), float(rng.uniform(0.6, 1.05)))
            cv.rounded((x, y, x + w, H + w), w / 2, skin, 0)
        elif kind == 1:
            w, h = float(rng.uniform(0.08, 0.2)) * W, float(rng.uniform(0.05, 0.12)) * H
            x, y = float(rng.uniform(0, W - w)), float(rng.uniform(0, H - h))
            cv.rect((x, y, x + w, y + h), _colour(rng), 0)
        else:
            y, t = float(rng.uniform(0.2, 0.95)) * H, float(rng.uniform(0.01, 0.025)) * H
            cv.rect((0, y, W, y + t), (150, 150, 160), 0)


def _light(image: np.ndarray, rng, opts: ShelfOptions) -> np.ndarray:
    H, W = image.shape[:2]
    k = opts.lighting
    if k > 0:
        angle = float(rng.uniform(0, 2 * math.pi))
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        ramp = (np.cos(angle) * (xx / W - 0.5) + np.sin(angle) * (yy / H - 0.5))
        gain = 1.0 + k * float(rng.uniform(0.3, 1.0)) * ramp + k * float(rng.uniform(-0.3, 0.15))
        cast = 1.0 + k * 0.15 * rng.uniform(-1, 1, size=3).astype(np.float32)
        image = image * gain[..., None] * cast
    if opts.noise > 0:
        image = image + rng.normal(0, opts.noise, size=image.shape).astype(np.float32)
    return image


def _visible_objects(ids: np.ndarray, products: list, min_visible: float) -> list[SynthObject]:
    out = []
    counts = np.bincount(ids.ravel(), minlength=int(ids.max()) + 1)
    for label, drawn, ident in products:
        full = (drawn[2] - drawn[0]) * (drawn[3] - drawn[1])
        if counts[ident] == 0 or full <= 0 or counts[ident] < min_visible * full:
            continue
        x0, y0, x1, y1 = _extent(ids, ident, drawn)
        out.append(SynthObject(label, (float(x0), float(y0), float(x1), float(y1))))
    return out


def _extent(ids: np.ndarray, ident: int, drawn) -> tuple[int, int, int, int]:
    H, W = ids.shape
    a0, b0 = max(0, int(drawn[0]) - 1), max(0, int(drawn[1]) - 1)
    a1, b1 = min(W, int(math.ceil(drawn[2])) + 2), min(H, int(math.ceil(drawn[3])) + 2)
    ys, xs = np.nonzero(ids[b0:b1, a0:a1] == ident)
    return a0 + xs.min(), b0 + ys.min(), a0 + xs.max() + 1, b0 + ys.max() + 1


def _visible_lines(ids: np.ndarray, tag_lines: list, W: int, H: int) -> list[SynthLine]:
    out = []
    for text, quad, ident in tag_lines:
        x0, y0, x1, y1 = quad[0], quad[1], quad[4], quad[5]
        if x0 < 0 or y0 < 0 or x1 > W or y1 > H:
            continue
        patch = ids[int(y0):int(math.ceil(y1)), int(x0):int(math.ceil(x1))]
        if patch.size and np.all(patch == ident):  # any occluder or neighbour over the text: unreadable
            out.append(SynthLine(text, tuple(round(float(v), 2) for v in quad)))
    return out


def coco_annotations(frame: ShelfFrame, image_id: int, first_id: int) -> list[dict]:
    cat = {name: i + 1 for i, name in enumerate(CATEGORIES)}
    anns, k = [], first_id
    for o in frame.objects:
        x0, y0, x1, y1 = o.box
        anns.append({"id": k, "image_id": image_id, "category_id": cat[o.label], "iscrowd": 0,
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
        k += 1
    for line in frame.lines:
        x0, y0, x1, y1 = line.box
        anns.append({"id": k, "image_id": image_id, "category_id": cat[TEXT_CATEGORY], "iscrowd": 0,
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                     "text": line.text, "segmentation": [list(line.quad)]})
        k += 1
    return anns


def write_dataset(out_dir, count: int, seed: int = 0, options: ShelfOptions | None = None,
                  progress=None) -> Path:
    """`count` frames as out_dir/images/NNNNNN.jpg and one COCO file out_dir/annotations.json
    (written last, atomically).  Frame i uses seed (seed, i)."""
    from PIL import Image

    if count < 1:
        raise ModelSettingError(f"count must be >= 1, got {count}")
    opts = options or ShelfOptions()
    out = Path(out_dir)
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"{out}: cannot create: {exc.strerror}") from None
    images, anns = [], []
    for i in range(count):
        frame = render_shelf(opts, seed=int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
        name = f"images/{i:06d}.jpg"
        Image.fromarray(frame.image).save(out / name, quality=opts.quality)
        images.append({"id": i + 1, "file_name": name, "width": opts.width, "height": opts.height})
        anns += coco_annotations(frame, i + 1, len(anns) + 1)
        if progress:
            progress(i + 1)
    coco = {"info": {"description": "edge-agent synthetic shelves", "seed": seed,
                     "options": {k: getattr(opts, k) for k in opts.__dataclass_fields__ if k != "font"}},
            "images": images, "annotations": anns,
            "categories": [{"id": i + 1, "name": n, "supercategory": "text" if n == TEXT_CATEGORY else "product"}
                           for i, n in enumerate(CATEGORIES)]}
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".annotations.", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(coco, f)
    os.replace(tmp, out / "annotations.json")
    return out / "annotations.json"
