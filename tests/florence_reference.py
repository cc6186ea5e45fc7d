"""The reference Florence2Processor (transformers 5) built from our tokenizer, for parity tests.

The published processor marks image positions with an `<image>` token (id 51289) that the
bundled tokenizer lacks, so it is added as an extra special token here, as
Florence-2's own processor files do."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

TOKENIZER = Path(__file__).resolve().parents[1] / "models" / "tokenizer"
POST_PROCESSOR_CONFIG = {
    "description_with_bboxes": {},
    "ocr": {"PATTERN": r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>",
            "AREA_THRESHOLD": 0.0},
}
FLORENCE_PREPROCESSOR = dict(do_resize=True, size={"height": 768, "width": 768}, resample=3, do_center_crop=False,
                             do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                             image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])


@lru_cache(maxsize=1)
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER))


@lru_cache(maxsize=1)
def processor():
    from transformers import AutoTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.florence2.processing_florence2 import Florence2Processor

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER), extra_special_tokens={"image_token": "<image>"})
    ip = CLIPImageProcessorPil(**FLORENCE_PREPROCESSOR)
    ip.image_seq_length = 577
    return Florence2Processor(image_processor=ip, tokenizer=tok, post_processor_config=POST_PROCESSOR_CONFIG)
