"""The lean CPU bf16 step trains what plain autocast trains: same loss and gradients up to bf16 rounding (no further
from fp32 than autocast is), the model's own forwards where it does not apply, and back to them on remove(); its
compiled layers (03's --compile_layers) train what its eager ones do.

Run: .venv/bin/python -m pytest -q tests/test_bf16_step.py
"""

from __future__ import annotations

import pytest

from simme_common.bf16_step import lean_bf16_step


def _lora_llama(seed: int = 0, model_type: str = "llama"):
    """A tiny GQA decoder (4 query heads on 2 key/value heads, head_dim 16: a power-of-two attention scale like
    SmolLM2's 64) in LoRA on every projection, frozen weights in bf16 as 03 stores them, and a right-padded batch."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from simme_common.precision import frozen_linears_to_bf16

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, vocab_size=300, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  max_position_embeddings=128, attn_implementation="eager")
    model = get_peft_model(AutoModelForCausalLM.from_config(config, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    frozen_linears_to_bf16(model)
    input_ids = torch.randint(3, 300, (3, 24))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 17:] = 0
    attention_mask[2, 9:] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return model, {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _run(model, batch, autocast: bool = True):
    import torch

    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.detach().float(), out.logits.detach().float(), grads


def _relative_error(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_lean_step_trains_what_autocast_trains(model_type):
    """Loss, logits and every LoRA gradient stay as close to an fp32 reference as plain autocast's; the LoRA layers,
    norms and attention were all replaced (so the comparison is not vacuous)."""
    import torch

    model, batch = _lora_llama(model_type=model_type)
    for p in model.parameters():  # the fp32 reference needs fp32 base weights: a copy of the bf16 values
        p.data = p.data.float()
    ref_loss, ref_logits, ref_grads = _run(model, batch, autocast=False)
    model, batch = _lora_llama(model_type=model_type)
    auto_loss, auto_logits, auto_grads = _run(model, batch)
    step = lean_bf16_step(model.get_base_model())
    assert len(step.norms) == 4 and len(step.lora_layers) == 14 and step.attention is not None
    assert model.get_base_model().config._attn_implementation == "simme_bf16_eager"
    lean_loss, lean_logits, lean_grads = _run(model, batch)

    assert abs(lean_loss - auto_loss) < 0.01 * auto_loss
    kept = batch["attention_mask"].bool()
    assert _relative_error(lean_logits[kept], ref_logits[kept]) <= 1.5 * _relative_error(auto_logits[kept], ref_logits[kept]) + 1e-3
    assert lean_grads.keys() == auto_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        auto_err = _relative_error(auto_grads[name], ref_grads[name])
        lean_err = _relative_error(lean_grads[name], ref_grads[name])
        assert lean_err <= 1.5 * auto_err + 0.02, (name, lean_err, auto_err)

    step.remove()  # the model's own forwards again: autocast's values, bit for bit
    assert model.get_base_model().config._attn_implementation == "eager"
    again_loss, again_logits, again_grads = _run(model, batch)
    assert torch.equal(again_loss, auto_loss) and torch.equal(again_logits, auto_logits)
    assert all(torch.equal(again_grads[n], auto_grads[n]) for n in auto_grads)


def test_outside_autocast_and_with_the_adapter_off_the_forwards_are_the_models_own():
    """In fp32 (no autocast) the lean forwards give the model's own values exactly, and PEFT's disable_adapter (the
    preference runs' reference model) still turns the adapter off."""
    import torch

    model, batch = _lora_llama()
    for p in model.parameters():
        p.data = p.data.float()
    with torch.no_grad():
        own = model(**batch).logits
        with model.disable_adapter():
            own_base = model(**batch).logits
    lean_bf16_step(model.get_base_model())
    with torch.no_grad():
        lean = model(**batch).logits
        with model.disable_adapter():
            lean_base = model(**batch).logits
    kept = batch["attention_mask"].bool()
    assert not torch.equal(own_base, own)
    assert torch.allclose(lean[kept], own[kept], atol=1e-5) and torch.allclose(lean_base[kept], own_base[kept], atol=1e-5)


def test_attention_masks_boolean_additive_and_causal_alike():
    """The bf16 attention masks the same positions for transformers' boolean and additive masks, and applies the
    causal mask itself when none is given."""
    import torch
    from types import SimpleNamespace

    from simme_common.bf16_step import _bf16_eager_attention
    from transformers.models.llama.modeling_llama import eager_attention_forward

    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=2, training=False)
    q, k, v = torch.randn(2, 4, 6, 16), torch.randn(2, 2, 6, 16), torch.randn(2, 2, 6, 16)
    allowed = torch.ones(6, 6, dtype=torch.bool).tril()[None, None].repeat(2, 1, 1, 1)
    allowed[1, :, :, 4:] = False  # padding at the end of the second row
    allowed[1, :, 4:, 0] = True  # padded queries still see a real key (right padding)
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    expected, _ = eager_attention_forward(module, q, k, v, additive, scaling=0.25)
    for mask in (allowed, additive):
        got, probs = _bf16_eager_attention(module, q, k, v, mask, scaling=0.25)
        assert torch.allclose(got, expected, atol=1e-5) and probs.shape == (2, 4, 6, 6)
        assert (probs[~allowed.expand(2, 4, 6, 6)] == 0).all()
    causal = torch.zeros(1, 1, 6, 6).masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), torch.finfo(torch.float32).min)
    expected, _ = eager_attention_forward(module, q, k, v, causal, scaling=0.25)
    got, _ = _bf16_eager_attention(module, q, k, v, None, scaling=0.25)
    assert torch.allclose(got, expected, atol=1e-5)


def test_other_architectures_are_left_alone():
    """A model whose norms may feed more than projections (here GPT-2) is not changed."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100))
    step = lean_bf16_step(model)
    assert step.summary() == "" and not step.norms and not step.lora_layers and step.attention is None


def test_compiled_layers_train_what_the_eager_layers_train():
    """03's --compile_layers: the same loss and LoRA gradients as the lean eager step, at two sequence lengths (the
    lengths are dynamic: one compile serves both)."""
    from simme_common.training import compile_decoder_layers

    model, batch = _lora_llama()
    lean_bf16_step(model.get_base_model())
    shorter = {k: v[:, :20] for k, v in batch.items()}
    eager = [_run(model, b) for b in (batch, shorter)]
    assert compile_decoder_layers(model.get_base_model()) == (True, "2 decoder layers compiled")
    compiled = [_run(model, b) for b in (batch, shorter)]
    for (loss, logits, grads), (want_loss, want_logits, want_grads) in zip(compiled, eager):
        assert abs(loss - want_loss) < 0.01 * want_loss
        assert grads.keys() == want_grads.keys()
        assert all(_relative_error(grads[n], want_grads[n]) < 0.05 for n in grads), "gradients"


def test_without_a_cpp_compiler_the_layers_stay_uncompiled(monkeypatch):
    """Inductor on CPU builds C++: where no compiler is found, 03 says so and trains the layers as they are."""
    from torch._inductor import config
    from torch._inductor.cpp_builder import cpp_compiler_search

    from simme_common.training import compile_decoder_layers

    monkeypatch.setattr(config.cpp, "cxx", ("/nonexistent/c++",))
    cpp_compiler_search.cache_clear()
    try:
        model, _ = _lora_llama()
        compiled, note = compile_decoder_layers(model.get_base_model())
    finally:
        cpp_compiler_search.cache_clear()
    assert not compiled and note.startswith("not compiled") and "C++ compiler" in note
    assert all(layer._compiled_call_impl is None for layer in model.get_base_model().model.layers)
