"""Model variants: the one place that reads a variant's spelling.

onnx-community names each graph `<part><suffix>.onnx`, with one of SUFFIXES.  A *mix* gives
one suffix per part, so that the vision tower and the text graphs can differ, as
transformers.js's Florence-2 demo does (fp16 vision, q4 text):

    int8                      every part int8 (`_int8`, `fp32`, `""` work the same way)
    vision_encoder=q4,int8    vision_encoder q4, every other part int8
    vision_encoder=fp32,decoder_model_merged=q4,int8
    auto                      per part, the first usable file in AUTO_ORDER (see models/modeldir.py)
    vision_encoder=fp16,auto  vision fp16, the other parts chosen as auto chooses them

Items are comma-separated; `PART=NAME` sets one part, a bare NAME sets every part not named.
Every suffix is accepted with or without its underscore (`int8` == `_int8`); fp32 is `fp32`,
`""` or `default`; transformers.js's `q8` is onnx-community's `_quantized`.  Parts left unset
(no bare NAME) are `auto`.  Bad spellings raise ValueError naming the item.
"""
from __future__ import annotations

from dataclasses import dataclass

PARTS = ("vision_encoder", "embed_tokens", "encoder_model", "decoder_model_merged")
SUFFIXES = ("", "_fp16", "_int8", "_uint8", "_quantized", "_q4", "_q4f16", "_bnb4")
AUTO = "auto"
ALIASES = {"fp32": "", "default": "", "none": "", "float32": "", "q8": "_quantized", "float16": "_fp16"}


def normalize_suffix(name: str) -> str:
    """'int8' / '_int8' / 'INT8' -> '_int8'; '', 'fp32', 'default' -> ''.  ValueError otherwise."""
    v = (name or "").strip().lower()
    if v in ("", "_"):
        return ""
    if v in ALIASES or v.lstrip("_") in ALIASES:
        return ALIASES.get(v, ALIASES.get(v.lstrip("_")))
    v = v if v.startswith("_") else "_" + v
    if v not in SUFFIXES:
        names = ", ".join(label(s) for s in SUFFIXES)
        raise ValueError(f"unknown model variant {name!r}: expected one of {names} (with or without '_')")
    return v


def label(suffix: str) -> str:
    """'' -> 'fp32', '_int8' -> 'int8', 'auto' -> 'auto'."""
    return suffix.lstrip("_") or "fp32"


@dataclass(frozen=True)
class Mix:
    """A suffix (or AUTO) per part, in PARTS order."""
    suffixes: tuple[str, ...]

    def __post_init__(self):
        if len(self.suffixes) != len(PARTS):
            raise ValueError(f"a variant mix needs one suffix per part ({', '.join(PARTS)})")
        for s in self.suffixes:
            if s != AUTO and s not in SUFFIXES:
                raise ValueError(f"unknown model variant suffix {s!r}")

    @classmethod
    def uniform(cls, suffix: str) -> "Mix":
        return cls((suffix,) * len(PARTS))

    def __getitem__(self, part: str) -> str:
        try:
            return self.suffixes[PARTS.index(part)]
        except ValueError:
            raise KeyError(f"unknown model part {part!r}: expected one of {', '.join(PARTS)}") from None

    def items(self):
        return zip(PARTS, self.suffixes)

    @property
    def has_auto(self) -> bool:
        return AUTO in self.suffixes

    def replace(self, **parts: str) -> "Mix":
        return Mix(tuple(parts.get(p, s) for p, s in self.items()))

    @property
    def spelling(self) -> str:
        """The canonical text: 'int8', 'vision_encoder=q4,int8' (the most common suffix is the bare one)."""
        counts = {s: self.suffixes.count(s) for s in self.suffixes}
        common = max(self.suffixes, key=lambda s: (counts[s], -self.suffixes.index(s)))
        named = [f"{p}={label(s)}" for p, s in self.items() if s != common]
        return ",".join([*named, label(common)])

    def __str__(self) -> str:
        return self.spelling


def parse_mix(text: str | None) -> Mix:
    """A mix from its spelling (module docstring); None means auto."""
    if text is None:
        return Mix.uniform(AUTO)
    if isinstance(text, Mix):
        return text
    items = [i.strip() for i in str(text).split(",")]
    if len(items) > 1 and any(not i for i in items):
        raise ValueError(f"variant {text!r}: empty item")
    default, named = None, {}
    for item in items:
        if "=" in item:
            part, _, name = (x.strip() for x in item.partition("="))
            if part not in PARTS:
                raise ValueError(f"variant {text!r}: unknown part {part!r}: expected one of {', '.join(PARTS)}")
            if part in named:
                raise ValueError(f"variant {text!r}: part {part!r} given twice")
            named[part] = _one(name)
        else:
            if default is not None:
                raise ValueError(f"variant {text!r}: more than one default suffix ({label(default)!r} and {item!r})")
            default = _one(item)
    return Mix(tuple(named.get(p, AUTO if default is None else default) for p in PARTS))


def _one(name: str) -> str:
    return AUTO if name.strip().lower() == AUTO else normalize_suffix(name)


def canonical(text) -> str:
    """The canonical spelling of a variant: '_int8' -> 'int8', '' -> 'fp32', 'int8,vision_encoder=_q4'
    -> 'vision_encoder=q4,int8', None -> 'auto'.  ValueError for a bad one."""
    return parse_mix(text).spelling
