"""The bundled demo model (issue 16): a small Florence-2 trained here on synthetic shelves
(edge_agent/demo/shelf-florence2, docs/training.md section 9) sees the products on the bundled
synthetic video (edge_agent/demo/synthetic, drawn by scripts/make_demo_sample.py, with the
first frame's annotations in shelf.json).

The floors below are about half of what was measured on the development machine (README,
docs/training.md section 9): ONNX Runtime's kernels differ between CPUs (AVX-512 VNNI, AVX2,
ARM), and a near tie in a logit can change a path of tokens."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from edge_agent import embedded

SHAPES = {"box", "can", "bottle", "bag"}
# measured (session 10, AMD EPYC with AVX-512 VNNI, onnxruntime 1.32.0): `models evaluate` tiled
# <OD> mAP@0.5 of the bundled q4 on the first frame, and the products that `run --once` boxed at
# IoU >= 0.5 (any label) of the 50 annotated
MEASURED_MAP50 = 0.265
MEASURED_MATCHED = 24


def edge_agent(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env["HOME"] = str(tmp_path / "home")  # no user config: the embedded default
    return subprocess.run([sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)


def test_the_first_command_prints_the_demo_models_boxes(tmp_path):
    """The README's first command at the defaults (3 beams, 1024 tokens): real boxes on the video's first frame."""
    run = edge_agent(tmp_path, "run", "--once")
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("{")))
    assert result["model"]["name"] == "shelf-florence2" and "synthetic" in result["model"]["note"]
    labels = [d["label"] for d in result["detections"]]
    truth = json.loads(embedded.SAMPLE_VIDEO.with_suffix(".json").read_text())
    shape_ids = {c["id"] for c in truth["categories"] if c["name"] in SHAPES}
    products = [a for a in truth["annotations"] if a["category_id"] in shape_ids]
    # mostly the four shapes; the model also writes the odd run-together label ("bottbottle")
    assert sum(label in SHAPES for label in labels) >= 0.5 * len(labels) > 0, labels
    from edge_agent.models.evaluate import box_iou

    gt = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in products)]
    iou = box_iou([d["box"] for d in result["detections"]], gt)
    matched = int((iou.max(axis=0) >= 0.5).sum())  # products with a box at IoU >= 0.5
    assert matched >= MEASURED_MATCHED // 2, (matched, len(gt))


def test_models_evaluate_scores_the_demo_model_on_its_video(tmp_path):
    """pycocotools' mAP of the bundled model on the bundled frame, tiled as `run` tiles it."""
    r = subprocess.run([sys.executable, "-m", "edge_agent", "models", "evaluate", str(embedded.DEMO_MODEL),
                        str(embedded.SAMPLE_VIDEO.with_suffix(".json")), "--mode", "tiled", "--tile-size", "768",
                        "--tasks", "od", "--json"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert row["variant"] == "q4" and row["mode"] == "tiled"
    assert row["map50"] >= MEASURED_MAP50 / 2, row
