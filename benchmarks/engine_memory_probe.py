"""Peak RSS of the int8 engine per stage (6 tiles, 64 decode steps at batch 12).

    python benchmarks/engine_memory_probe.py '{"shared_arena": false}'   # EngineOptions overrides as JSON
"""
import json
import sys
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edge_agent.models.engine import EngineOptions, Florence2Engine
from edge_agent.bench import synthetic_shelf, frame_tiles, FrameWorkload, peak_rss_mb, task_settings
from edge_agent.models.generate import generate
from edge_agent.models.preprocess import preprocess
kw = json.loads(sys.argv[1])
rss = peak_rss_mb
eng = Florence2Engine(EngineOptions(model_dir="/tmp/perf/florence2-base-seed0", variant="_int8", num_beams=1, max_new_tokens=512, **kw))
r0 = rss()
work = FrameWorkload(od_tokens=64, ocr_tokens=32)
tiles = frame_tiles(synthetic_shelf(), work)
px = preprocess(tiles, eng.pre_cfg)
t = time.perf_counter(); f = eng.image_features(px); tv = time.perf_counter() - t; r1 = rss()
t = time.perf_counter(); h, m = eng.encode(f, ("od", "ocr")); te = time.perf_counter() - t; r2 = rss()
st = task_settings(eng, work)
t = time.perf_counter(); generate(eng.runner, h, m, st["od"], [st["od"], st["ocr"]] * 6); td = time.perf_counter() - t; r3 = rss()
print(f"{kw}: load {r0:.0f} MB, after vision {r1:.0f}, after encoder {r2:.0f}, after decode {r3:.0f} | vision {tv/6:.2f} s/tile, enc {te:.2f} s, decode {1000*td/64:.1f} ms/step(b12, 64 steps)")
