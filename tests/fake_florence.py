"""Tiny ONNX graphs with Florence-2's onnx-community interface (names, dtypes, ranks),
for testing model-directory handling, verify and quantize without the real export.

The graphs compute nothing meaningful; they are valid ONNX that onnxruntime can load and
run, each with a MatMul or Gather over an initializer so quantizers have work to do.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "models" / "tokenizer"
KINDS = ("decoder.key", "decoder.value", "encoder.key", "encoder.value")
OPSET = 17


def _model(nodes, inputs, outputs, inits, name):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fake_florence")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _w(name, shape, rng):
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.1, name)


def vision_encoder(d, rng, size=768):
    t = 577
    nodes = [helper.make_node("GlobalAveragePool", ["pixel_values"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["proj"]),
             helper.make_node("Reshape", ["proj", "shape"], ["image_features"])]
    inits = [_w("W", (3, t * d), rng), numpy_helper.from_array(np.array([-1, t, d], np.int64), "shape")]
    return _model(nodes, [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, size, size])],
                  [helper.make_tensor_value_info("image_features", TensorProto.FLOAT, ["batch", t, d])], inits, "vision")


def embed_tokens(d, vocab, rng):
    nodes = [helper.make_node("Gather", ["embed.weight", "input_ids"], ["inputs_embeds"])]
    return _model(nodes, [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
                  [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "seq", d])],
                  [_w("embed.weight", (vocab, d), rng)], "embed")


def encoder_model(d, rng):
    nodes = [helper.make_node("MatMul", ["inputs_embeds", "W"], ["h"]),
             helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "axes"], ["mask3"]),
             helper.make_node("Mul", ["h", "mask3"], ["last_hidden_state"])]
    inits = [_w("W", (d, d), rng), numpy_helper.from_array(np.array([-1], np.int64), "axes")]
    return _model(nodes, [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "seq", d]),
                          helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
                  [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", d])],
                  inits, "encoder")


def decoder_model_merged(d, vocab, layers, rng, heads=2):
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info("inputs_embeds", f, ["batch", "seq", d]),
              helper.make_tensor_value_info("encoder_attention_mask", i64, ["batch", "enc"]),
              helper.make_tensor_value_info("encoder_hidden_states", f, ["batch", "enc", d]),
              helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])]
    outputs = [helper.make_tensor_value_info("logits", f, ["batch", "seq", vocab])]
    nodes = [helper.make_node("MatMul", ["inputs_embeds", "lm_head"], ["logits"])]
    for i in range(layers):
        for kind in KINDS:
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f, ["batch", heads, "past", d // heads]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f, ["batch", heads, "past", d // heads]))
            nodes.append(helper.make_node("Identity", [f"past_key_values.{i}.{kind}"], [f"present.{i}.{kind}"]))
    return _model(nodes, inputs, outputs, [_w("lm_head", (d, vocab), rng)], "decoder")


def write_fake_model_dir(out, d=8, vocab=51290, layers=2, seed=0, variant="", tokenizer=True) -> Path:
    out = Path(out)
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    graphs = {"vision_encoder": vision_encoder(d, rng), "embed_tokens": embed_tokens(d, vocab, rng),
              "encoder_model": encoder_model(d, rng), "decoder_model_merged": decoder_model_merged(d, vocab, layers, rng)}
    for part, m in graphs.items():
        onnx.save(m, str(out / "onnx" / f"{part}{variant}.onnx"))
    config = {"model_type": "florence2", "text_config": {"d_model": d, "decoder_layers": layers, "vocab_size": vocab},
              "vision_config": {"projection_dim": d}}
    gen = {"decoder_start_token_id": 2, "forced_bos_token_id": 0, "forced_eos_token_id": 2,
           "no_repeat_ngram_size": 3, "num_beams": 3, "eos_token_id": 2, "pad_token_id": 1, "bos_token_id": 0}
    pre = {"do_resize": True, "size": {"height": 768, "width": 768}, "resample": 3, "do_center_crop": False,
           "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
           "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
           "image_processor_type": "CLIPImageProcessor", "processor_class": "Florence2Processor"}
    for name, data in (("config.json", config), ("generation_config.json", gen), ("preprocessor_config.json", pre)):
        (out / name).write_text(json.dumps(data, indent=2))
    if tokenizer:
        for f in TOKENIZER.iterdir():
            if f.suffix in (".json", ".txt"):
                shutil.copy(f, out / f.name)
    return out
