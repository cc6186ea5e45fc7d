"""Small explicit torch forwards over a native `Florence2ForConditionalGeneration`'s weights.

Each wrapper has plain tensor inputs and outputs (no HF Cache objects), so that
`torch.onnx.export(dynamo=False)` traces it into the onnx-community graph layout:

- `VisionWrapper`:   pixel_values -> image_features (the projected, normed image tokens)
- `EmbedWrapper`:    input_ids -> inputs_embeds (scaled as BART scales them)
- `EncoderWrapper`:  inputs_embeds, attention_mask -> last_hidden_state
- `DecoderFirst`:    first step: inputs_embeds, encoder_attention_mask, encoder_hidden_states
                     -> logits, present.{i}.{decoder,encoder}.{key,value}
- `DecoderWithPast`: later steps: inputs_embeds, encoder_attention_mask, past.{i}.{decoder,encoder}.{key,value}
                     -> logits, present.{i}.decoder.{key,value}

The arithmetic is BART's (post-LayerNorm layers, learned positions with offset 2, no
final_logits_bias in Florence-2), written with explicit key/value tensors.  Import this
module only at export time: it needs torch.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

POS_OFFSET = 2  # BartLearnedPositionalEmbedding offset


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, S, D] -> [B, H, S, D/H]"""
    b, s, d = x.shape
    return x.reshape(b, s, heads, d // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, S, Dh] -> [B, S, H*Dh]"""
    b, h, s, dh = x.shape
    return x.transpose(1, 2).reshape(b, s, h * dh)


def _padding_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, S] of 1/0 -> additive [B, 1, 1, S]"""
    m = mask[:, None, None, :].to(dtype)
    return (1.0 - m) * torch.finfo(dtype).min


def _attend(q, k, v, bias, scaling: float) -> torch.Tensor:
    w = torch.matmul(q, k.transpose(-1, -2)) * scaling
    if bias is not None:
        w = w + bias
    return torch.matmul(torch.softmax(w, dim=-1), v)


def _project_kv(attn, states, heads):
    return _split_heads(attn.k_proj(states), heads), _split_heads(attn.v_proj(states), heads)


def _attention_out(attn, hidden, k, v, bias, heads):
    q = _split_heads(attn.q_proj(hidden), heads)
    return attn.out_proj(_merge_heads(_attend(q, k, v, bias, attn.scaling)))


def _ffn(layer, h):
    out = layer.fc2(layer.activation_fn(layer.fc1(h)))
    return layer.final_layer_norm(h + out)


def _positions(embed_positions: nn.Embedding, start, length, device) -> torch.Tensor:
    ids = torch.arange(length, device=device) + start + POS_OFFSET
    return nn.functional.embedding(ids, embed_positions.weight)[None]


VISION_CHUNK = 9216  # tokens per window-attention call: a quarter of the first stage at 768 (192 x 192)
MLP_CHUNK = 2304  # tokens per vision MLP call: a sixteenth of the first stage at 768, the whole third stage


def _qkv(linear: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k and v of a fused qkv Linear ([3C, C] weight, q rows first), each its own MatMul.  The
    fused output and the three slices of it were alive together: [36864, 384] floats (54 MB) plus
    as much again at 768, the vision tower's peak (base int8 profile, session 8)."""
    weights, biases = linear.weight.chunk(3, 0), (linear.bias.chunk(3, 0) if linear.bias is not None else [None] * 3)
    return tuple(nn.functional.linear(x, w, b) for w, b in zip(weights, biases))


def channel_attention_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """`Florence2VisionChannelAttention.forward` (transformers 5), same arithmetic, other layouts.

    transformers moves the token axis last (`permute(2, 0, 3, 4, 1)` of [B, N, 3, G, D]), which
    ONNX Runtime runs as 5-D Transposes at ~0.7 GB/s: 213 of 751 ms per 768 tile (base int8
    profile).  Here q, k and v stay [B, G, N, D] (4-D swaps of two middle axes, fast paths) and
    the two products are taken transposed: q^T k is the same [B, G, D, D] as q_t k_t^T, and
    v w^T is (w v)^T."""
    b, n, c = hidden_states.shape
    g = self.groups
    q, k, v = (t.reshape(b, n, g, c // g).permute(0, 2, 1, 3) for t in _qkv(self.qkv, hidden_states))  # [B, G, N, D]
    w = torch.matmul(q.transpose(-1, -2), k) * (n ** -0.5)  # [B, G, D, D]
    w = nn.functional.softmax(w, dim=-1)
    out = torch.matmul(v, w.transpose(-1, -2))  # [B, G, N, D]
    return self.proj(out.permute(0, 2, 1, 3).reshape(b, n, c))


def _window_attention(self, query, key, value):
    """eager attention of [W, H, T, D] windows, all heads at once.  Until session 11 one head at a
    time (for the scores' memory, before windows came in chunks of VISION_CHUNK tokens): with the
    chunks, all heads cost +5-8 MB of the base int8 tower's peak per 768 tile and save its per-head
    Slices and Concat, 0.510-0.518 -> 0.484-0.495 s per tile."""
    w = nn.functional.softmax(torch.matmul(query, key.transpose(2, 3)) * self.scale, dim=-1)
    return torch.matmul(w, value).transpose(1, 2)  # [W, T, H, D], as eager_attention_forward returns


def window_attention_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """`Florence2VisionWindowAttention.forward` (transformers 5), attention over at most
    VISION_CHUNK tokens' worth of windows per call (the first stage at 768: 4 calls of 64)."""
    import torch.nn.functional as F

    b, height, width, c = hidden_states.shape
    ws = self.window_size
    pad_r, pad_b = (ws - width % ws) % ws, (ws - height % ws) % ws
    hidden_states = F.pad(hidden_states, (0, 0, 0, pad_r, 0, pad_b))
    _, ph, pw, _ = hidden_states.shape
    windows = hidden_states.view(b, ph // ws, ws, pw // ws, ws, c).permute(0, 1, 3, 2, 4, 5).contiguous()
    t, per_image = ws * ws, (ph // ws) * (pw // ws)  # static: the image side is baked into the graph
    windows = windows.view(-1, per_image, t, c)  # [B, W, T, C]: the batch stays symbolic
    outs = []
    step = max(1, VISION_CHUNK // t)
    for part in (windows.split(step, dim=1) if per_image > step else (windows,)):  # independent windows: 4 calls at 768
        w = part.shape[1]
        x = part.reshape(-1, t, c)
        query, key, value = (y.reshape(-1, t, self.num_heads, c // self.num_heads).permute(0, 2, 1, 3)
                             for y in _qkv(self.qkv, x))  # [B*W, H, T, D] each
        outs.append(self.proj(_window_attention(self, query, key, value).reshape(-1, w, t, c)))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    out = out.view(-1, ph // ws, pw // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).contiguous()
    out = out.view(-1, ph, pw, c)[:, :height, :width, :].contiguous()
    return out.view(b, height * width, c)


def mlp_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """`Florence2VisionMLP.forward` over chunks of MLP_CHUNK tokens (the same arithmetic, token by
    token).  The first stage's hidden layer at 768 (36864 tokens x 512, 72 MB) and its GELU (as
    much again) were the vision tower's largest live tensors: 162 of its peak live MB in ONNX
    Runtime's base int8 profile.  Chunks of 9216 tokens until session 12; 2304 keep a chunk's
    hidden layer at 4.5 MB (the first stage), near the cache: base int8 tower, one 768 tile,
    peak RSS 404 -> 370 MB, its fc1/GELU/fc2 206 + 64 -> 191 + 56 ms (ORT profile), 0.68-0.82 ->
    0.66-0.78 s per tile (benchmarks/frame-results.md).  fp32 features bit-identical.  A stage of
    at most MLP_CHUNK tokens stays one call."""
    if hidden_states.shape[1] <= MLP_CHUNK:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))
    return torch.cat([self.fc2(self.activation_fn(self.fc1(part)))
                      for part in hidden_states.split(MLP_CHUNK, dim=1)], dim=1)


def _conv_nhwc(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) + x for x in [B, H, W, C]: a DaViT block's depthwise convolution (its positional
    encoding), with the layout changes written as 4-D permutes around the Conv.  ONNX Runtime folds
    exactly those into the Conv's NCHWc reorders (ReorderInput/ReorderOutput channels_last), so no
    Transpose runs; transformers' flatten(2).transpose(1, 2) of [B, C, H, W] around a Reshape it
    runs as two full Transposes (base, 768 tile: 18% of the int8 tower's time)."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + x


def vision_block_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """`Florence2VisionBlock.forward` (transformers 5) with the hidden state in [B, H, W, C] between
    its spatial and its channel block (spatial_block_forward, channel_block_forward): the same
    operations on the same values, and no layout change but the four convolutions' (_conv_nhwc).
    In and out [B, C, H, W] as before; between two blocks ONNX Runtime cancels the out-permute
    against the next block's in-permute."""
    return self.channel_block(self.spatial_block(hidden_states.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


def _tokens(x: torch.Tensor) -> torch.Tensor:  # [B, H, W, C] -> [B, N, C], a view
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], x.shape[3])


def _block_nhwc(block, x: torch.Tensor, attend) -> torch.Tensor:
    """A DaViT spatial or channel block on [B, H, W, C]: convolution, attention (`attend`: norm and
    attention of x, giving [B, N, C]), convolution, MLP, each with its residual."""
    x = _conv_nhwc(block.conv1, x)
    x = x + block.drop_path1(attend(x)).reshape(x.shape)
    x = _conv_nhwc(block.conv2, x)
    return x + block.drop_path2(block.ffn(block.norm2(_tokens(x)))).reshape(x.shape)


def spatial_block_forward(self, x: torch.Tensor) -> torch.Tensor:
    """`Florence2VisionSpatialBlock.forward` on [B, H, W, C] (see vision_block_forward); its window
    attention takes the [B, H, W, C] grid."""
    return _block_nhwc(self, x, lambda h: self.window_attn(self.norm1(h)))


def channel_block_forward(self, x: torch.Tensor) -> torch.Tensor:
    """`Florence2VisionChannelBlock.forward` on [B, H, W, C] (see vision_block_forward); its channel
    attention takes tokens."""
    return _block_nhwc(self, x, lambda h: self.channel_attn(self.norm1(_tokens(h))))


class VisionWrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.get_image_features(pixel_values).pooler_output


@contextmanager
def export_layouts():
    """Export-time forwards that ONNX Runtime runs faster (same results; see channel_attention_forward)."""
    from transformers.models.florence2 import modeling_florence2 as mf

    classes = (mf.Florence2VisionChannelAttention, mf.Florence2VisionWindowAttention, mf.Florence2VisionMLP,
               mf.Florence2VisionBlock, mf.Florence2VisionSpatialBlock, mf.Florence2VisionChannelBlock)
    originals = [c.forward for c in classes]
    for c, forward in zip(classes, (channel_attention_forward, window_attention_forward, mlp_forward,
                                    vision_block_forward, spatial_block_forward, channel_block_forward)):
        c.forward = forward
    try:
        yield
    finally:
        for c, forward in zip(classes, originals):
            c.forward = forward


class EmbedWrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.embed = model.model.language_model.encoder.embed_tokens

    def forward(self, input_ids):
        return self.embed(input_ids)


class EncoderWrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.enc = model.model.language_model.encoder
        self.heads = model.config.text_config.encoder_attention_heads

    def forward(self, inputs_embeds, attention_mask):
        pos = _positions(self.enc.embed_positions, 0, inputs_embeds.shape[1], inputs_embeds.device)
        h = self.enc.layernorm_embedding(inputs_embeds + pos)
        bias = _padding_mask(attention_mask, h.dtype)
        for layer in self.enc.layers:
            k, v = _project_kv(layer.self_attn, h, self.heads)
            h = layer.self_attn_layer_norm(h + _attention_out(layer.self_attn, h, k, v, bias, self.heads))
            h = _ffn(layer, h)
        return h


class _DecoderBase(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.dec = model.model.language_model.decoder
        self.lm_head = model.lm_head
        self.heads = model.config.text_config.decoder_attention_heads

    def _causal_bias(self, past_len, new_len, dtype, device):
        j = torch.arange(new_len, device=device) + past_len  # absolute position of each new token
        total = torch.arange(past_len + new_len, device=device)
        allowed = total[None, :] <= j[:, None]
        return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[None, None]

    def _run(self, inputs_embeds, encoder_attention_mask, self_kv, cross_kv, past_len):
        """self_kv[i] = (past_k, past_v) or None; cross_kv[i] = (k, v). Returns logits, new self kv."""
        new_len = inputs_embeds.shape[1]
        pos = _positions(self.dec.embed_positions, past_len, new_len, inputs_embeds.device)
        h = self.dec.layernorm_embedding(inputs_embeds + pos)
        causal = self._causal_bias(past_len, new_len, h.dtype, h.device)
        cross_bias = _padding_mask(encoder_attention_mask, h.dtype)
        presents = []
        for i, layer in enumerate(self.dec.layers):
            k, v = _project_kv(layer.self_attn, h, self.heads)
            if self_kv[i] is not None:
                k = torch.cat([self_kv[i][0], k], dim=2)
                v = torch.cat([self_kv[i][1], v], dim=2)
            presents.append((k, v))
            h = layer.self_attn_layer_norm(h + _attention_out(layer.self_attn, h, k, v, causal, self.heads))
            ck, cv = cross_kv[i]
            h = layer.encoder_attn_layer_norm(h + _attention_out(layer.encoder_attn, h, ck, cv, cross_bias, self.heads))
            h = _ffn(layer, h)
        return self.lm_head(h), presents


class DecoderFirst(_DecoderBase):
    """No past: computes the cross-attention keys/values from the encoder output."""

    def forward(self, inputs_embeds, encoder_attention_mask, encoder_hidden_states):
        cross = [_project_kv(layer.encoder_attn, encoder_hidden_states, self.heads) for layer in self.dec.layers]
        logits, presents = self._run(inputs_embeds, encoder_attention_mask, [None] * len(cross), cross, 0)
        out = [logits]
        for (k, v), (ck, cv) in zip(presents, cross):
            out += [k, v, ck, cv]
        return tuple(out)


class DecoderWithPast(_DecoderBase):
    """With past: past tensors come flat, 4 per layer (decoder key, value, encoder key, value)."""

    def forward(self, inputs_embeds, encoder_attention_mask, *past):
        n = len(self.dec.layers)
        self_kv = [(past[4 * i], past[4 * i + 1]) for i in range(n)]
        cross = [(past[4 * i + 2], past[4 * i + 3]) for i in range(n)]
        past_len = past[0].shape[2]
        logits, presents = self._run(inputs_embeds, encoder_attention_mask, self_kv, cross, past_len)
        out = [logits]
        for k, v in presents:
            out += [k, v]
        return tuple(out)
