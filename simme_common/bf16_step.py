"""Fewer dtype round trips in a CPU bf16-autocast training step of a Llama-family model.

Autocast casts every op's inputs on their own, so one activation is cast many times per step:
- the normed hidden state that q/k/v (and gate/up) read is cast to bf16 once per projection, and once more per LoRA A
  (PEFT first casts it back to the fp32 of the LoRA weights);
- RoPE leaves q and k in fp32 (its cos/sin follow the fp32 residual stream), the attention scores meet an fp32 mask,
  so softmax and the [batch x heads x T x T] probabilities run in fp32 and are cast back for the value product;
- LoRA's scaling is a pass of its own over each projection's output, and its addition to the base output another.
`lean_bf16_step` casts each of these once, where autocast would have cast it anyway, and folds the LoRA scaling and
sum into one in-place matmul. The values differ from plain autocast's by bf16 rounding only (the LoRA sum is rounded
once instead of twice; gradients of a tensor read by several projections are summed in bf16): in
tests/test_bf16_step.py the loss, logits and LoRA gradients stay as close to an fp32 reference as autocast's.
On the 2-core AMX Xeon it made cpu_demo's uncompiled steps 1.22x faster (docs/train.md, Efficiency). Only Llama-family
layouts are changed (their norms feed projections only); other models, DoRA and other LoRA variants, dropout,
merged or disabled adapters keep their own forwards.
"""

from __future__ import annotations

import types

# Decoder layouts whose input_layernorm / post_attention_layernorm outputs are read by linear projections only.
LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3")
ATTENTION_NAME = "simme_bf16_eager"


def _lean_norm_forward(self, hidden_states):
    """Under autocast, the norm's fp32 output is cast to the compute dtype here, once: every reader of it is a
    projection that autocast would otherwise cast it for (q, k, v and LoRA's A, or gate, up and theirs)."""
    import torch

    out = type(self).forward(self, hidden_states)
    device = out.device.type
    if out.dtype == torch.float32 and torch.is_autocast_enabled(device):
        return out.to(torch.get_autocast_dtype(device))
    return out


def _lean_lora_forward(self, x, *args, **kwargs):
    """PEFT LoRA Linear: base(x) + (x A^T)(s B)^T as one addmm; anything unusual goes through PEFT's forward."""
    import torch

    adapters = self.active_adapters
    name = adapters[0] if len(adapters) == 1 else None
    if (args or kwargs or name is None or self.disable_adapters or self.merged or name not in self.lora_A
            or name in self.lora_variant or not isinstance(self.lora_dropout[name], torch.nn.Identity)
            or self.lora_B[name].bias is not None or not torch.is_autocast_enabled(x.device.type)):
        return type(self).forward(self, x, *args, **kwargs)
    rows = x.reshape(-1, x.shape[-1])
    result = self.base_layer(rows)  # 2-D, so the in-place sum below is on a tensor of its own, not on a view
    h = torch.nn.functional.linear(rows, self.lora_A[name].weight)
    # The scaling multiplies the r x out weight, not the rows x out output (same values for 2^k), and the LoRA
    # product accumulates into the base output in place (nothing saved for backward reads that output). In-place
    # ops bypass autocast, so the operands are cast by hand, as autocast would have.
    scaled_b = (self.lora_B[name].weight * self.scaling[name]).to(result.dtype)
    result.addmm_(h.to(result.dtype), scaled_b.t())
    return result.view(*x.shape[:-1], result.shape[-1])


def _bf16_eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention with q, k, v cast once and the scores, mask, softmax and probabilities all in the compute
    dtype (autocast's when on): the values of transformers' eager attention under autocast, without its fp32 round
    trips over the [batch x heads x T x T] scores. The query heads that share a key/value head are scored as one
    [groups * T] block against it, so keys and values are not repeated per query head (nor summed back in backward)."""
    import torch

    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    batch, heads, length, dim = query.shape
    kv_heads, kv_length = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    q = (query * scaling).to(dtype).reshape(batch, kv_heads, groups * length, dim)  # scale [T x d], not [T x T]
    scores = q @ key.to(dtype).transpose(2, 3)  # [batch, kv_heads, groups * T, kv_T]
    if attention_mask is None:  # causal: the queries are the last `length` of the kv_length positions
        allowed = torch.ones(length, kv_length, dtype=torch.bool, device=query.device).tril(kv_length - length)
    elif attention_mask.dtype == torch.bool:  # True where a query may attend
        allowed = attention_mask[..., :kv_length]
    else:  # additive: 0 where a query may attend
        allowed = attention_mask[..., :kv_length] == 0
    allowed = allowed[None, None] if allowed.dim() == 2 else allowed  # [batch or 1, 1 or heads, T, kv_T]
    allowed = (allowed[:, :, None] if allowed.shape[1] == 1
               else allowed.reshape(allowed.shape[0], kv_heads, groups, length, kv_length))
    # In place and outside autograd: softmax's gradient is exactly 0 where its output is, so masking the gradient
    # too (masked_fill's backward) would change nothing.
    with torch.no_grad():
        scores.view(batch, kv_heads, groups, length, kv_length).masked_fill_(~allowed, torch.finfo(dtype).min)
    probs = torch.softmax(scores, dim=-1)  # the CPU kernel accumulates reduced precision in fp32
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    out = (probs @ value.to(dtype)).view(batch, heads, length, dim)
    return out.transpose(1, 2).contiguous(), probs.view(batch, heads, length, kv_length)


def _register_attention():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def boolean_causal_mask(*args, **kwargs):
        kwargs["allow_is_causal_skip"] = False
        return sdpa_mask(*args, **kwargs)

    AttentionInterface.register(ATTENTION_NAME, _bf16_eager_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, boolean_causal_mask)


class LeanStep:
    """What `lean_bf16_step` changed; `remove()` puts the model's own forwards back."""

    def __init__(self):
        self.norms, self.lora_layers, self.attention = [], [], None  # attention: (model, implementation it had)

    def remove(self):
        for module in self.norms + self.lora_layers:
            del module.forward
        for layer in self.lora_layers:
            layer.cast_input_dtype_enabled = True
        if self.attention is not None:
            model, implementation = self.attention
            model.set_attn_implementation(implementation)
        self.norms, self.lora_layers, self.attention = [], [], None

    def summary(self) -> str:
        """What changed, for run_config.json ('' when nothing did)."""
        parts = [f"{len(self.norms)} norm outputs cast once"] if self.norms else []
        parts += [f"{len(self.lora_layers)} LoRA layers fused"] if self.lora_layers else []
        parts += ["attention in bf16"] if self.attention is not None else []
        return ", ".join(parts)


def lean_bf16_step(causal_lm) -> LeanStep:
    """Apply the single casts above to `causal_lm` (the transformers model, PEFT's base model when wrapped) when it
    is a Llama-family decoder on eager attention; other models come back unchanged (an empty LeanStep)."""
    step = LeanStep()
    config = causal_lm.config
    layers = getattr(getattr(causal_lm, "model", None), "layers", None)
    if getattr(config, "model_type", None) not in LLAMA_LIKE or layers is None:
        return step
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:
        LoraLinear = ()
    for layer in layers:
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.forward = types.MethodType(_lean_norm_forward, norm)
            step.norms.append(norm)
        for module in layer.modules():
            if LoraLinear and isinstance(module, LoraLinear):
                module.cast_input_dtype_enabled = False  # the bf16 input stays bf16 for LoRA A
                module.forward = types.MethodType(_lean_lora_forward, module)
                step.lora_layers.append(module)
    if config._attn_implementation == "eager":
        _register_attention()
        causal_lm.set_attn_implementation(ATTENTION_NAME)
        step.attention = (causal_lm, "eager")
    return step
