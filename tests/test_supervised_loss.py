"""The supervised-only LM head gives the full computation's loss, gradients and logged metrics.

Run: .venv/bin/python -m pytest -q tests/test_supervised_loss.py
"""

from __future__ import annotations

import pytest

from simme_common.supervised_loss import compact_lm_head


def _model_and_batch(tiny_model_dir, seed: int = 0):
    """The tiny Llama with TRL's fused head, wrapped in LoRA like 03 does, and a padded batch with masked labels."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    vocab = base.config.vocab_size
    input_ids = torch.randint(3, vocab, (3, 20))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 14:] = 0  # a right-padded row
    attention_mask[2, 9:] = 0
    labels = input_ids.clone()
    labels[:, :6] = -100  # prompt (friends' words, system prompt)
    labels[0, 10:13] = -100  # a second untrained stretch inside a row
    labels[attention_mask == 0] = -100
    return model, {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _loss_and_grads(model, batch, fused: bool):
    model.zero_grad()
    out = model(**batch, fused_lm_head=True) if fused else model(**batch)
    loss = out.loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, out


def test_compact_head_matches_full_logits_loss_and_gradients(tiny_model_dir):
    import torch

    model, batch = _model_and_batch(tiny_model_dir)
    full_loss, full_grads, _ = _loss_and_grads(model, batch, fused=False)  # the model's own forward: full logits
    assert compact_lm_head(model.get_base_model()) is None
    loss, grads, out = _loss_and_grads(model, batch, fused=True)

    torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == full_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(g.abs().sum() > 0 for g in grads.values())
    # TRL's compute_loss reads these: same shape and convention as its own head (zero off the mask)
    shifted = batch["labels"][:, 1:]
    assert out.log_probs.shape == shifted.shape and torch.equal(out.label_mask, shifted != -100)
    assert (out.log_probs[shifted == -100] == 0).all() and (out.entropy[shifted == -100] == 0).all()


def test_compact_head_matches_trl_fused_head_metrics(tiny_model_dir):
    import torch

    model, batch = _model_and_batch(tiny_model_dir, seed=1)
    with torch.no_grad():
        trl_out = model(**batch, fused_lm_head=True)  # TRL's head, every position scored
    compact_lm_head(model.get_base_model())
    with torch.no_grad():
        out = model(**batch, fused_lm_head=True)
    torch.testing.assert_close(out.log_probs, trl_out.log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.entropy, trl_out.entropy, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.is_top1, trl_out.is_top1) and torch.equal(out.label_mask, trl_out.label_mask)


def test_batch_without_supervised_tokens_gives_a_differentiable_zero(tiny_model_dir):
    model, batch = _model_and_batch(tiny_model_dir)
    compact_lm_head(model.get_base_model())
    batch["labels"][:] = -100
    out = model(**batch, fused_lm_head=True)
    out.loss.backward()  # must not fail: an all-prompt micro-batch happens with small batches
    assert out.loss.item() == 0.0


def test_generation_and_plain_forward_are_unchanged(tiny_model_dir):
    import torch

    model, batch = _model_and_batch(tiny_model_dir)
    with torch.no_grad():
        before = model(input_ids=batch["input_ids"]).logits
    compact_lm_head(model.get_base_model())
    with torch.no_grad():
        after = model(input_ids=batch["input_ids"]).logits
        generated = model.generate(input_ids=batch["input_ids"][:1, :5], max_new_tokens=3, do_sample=False)
    assert torch.equal(before, after) and generated.shape == (1, 8)


@pytest.mark.parametrize("field", ["final_logit_softcapping", "logit_scale"])
def test_models_with_scaled_logits_keep_trl_head(tiny_model_dir, field):
    model, _ = _model_and_batch(tiny_model_dir)
    base = model.get_base_model()
    setattr(base.config, field, 30.0)
    previous = base.forward
    assert field in compact_lm_head(base) and base.forward == previous


def _reference(hidden, labels, weight):
    """The one-pass computation: every selected row's full logits at once (what the chunks must reproduce)."""
    import torch

    mask = labels != -100
    logits = torch.nn.functional.linear(hidden[mask], weight).float()
    log_probs = logits.log_softmax(-1)
    target = labels[mask]
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return log_probs.gather(1, target[:, None])[:, 0], entropy.detach(), logits.argmax(-1) == target


@pytest.mark.parametrize("autocast", [False, True])
def test_chunked_head_matches_one_pass_values_and_gradients(autocast):
    """Chunks of 5 rows over 12 selected rows (a partial last chunk), a trainable head weight (full fine-tuning:
    its gradient is recomputed chunk by chunk in backward) and uneven per-row incoming gradients."""
    import torch

    from simme_common.supervised_loss import supervised_log_probs

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9))
    labels[0, :4] = -100
    labels[1, 7:] = -100  # 12 supervised rows
    row_weights = torch.rand(12)
    results = []
    for chunked in (True, False):
        hidden.grad, head.weight.grad = None, None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if chunked:
                log_probs, entropy, top1, mask = supervised_log_probs(hidden, labels, head, chunk=5)
            else:
                log_probs, entropy, top1 = _reference(hidden, labels, head.weight)
        (log_probs * row_weights).sum().backward()
        results.append((log_probs.detach(), entropy, top1, hidden.grad.clone(), head.weight.grad.clone()))
    tol = {"rtol": 2e-2, "atol": 2e-2} if autocast else {"rtol": 1e-5, "atol": 1e-6}
    for got, want, name in zip(results[0], results[1], ("log-probs", "entropy", "top-1", "hidden grad", "weight grad")):
        if name == "top-1":
            assert torch.equal(got, want), name
        else:
            torch.testing.assert_close(got, want, **tol, msg=name)
    assert results[0][3].abs().sum() > 0 and results[0][4].abs().sum() > 0
    assert torch.equal(mask, labels != -100)


def test_chunked_head_keeps_no_vocabulary_sized_tensor_for_backward():
    """What the chunked head saves for backward is [rows x hidden] and the weight, never [rows x vocabulary]: the
    memory of a training step's head no longer grows with the vocabulary times the supervised tokens."""
    import torch

    from simme_common.supervised_loss import supervised_log_probs

    head = torch.nn.Linear(8, 4000, bias=False).requires_grad_(False)  # frozen, as under LoRA
    hidden = torch.randn(1, 300, 8, requires_grad=True)
    labels = torch.randint(0, 4000, (1, 300))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        log_probs, *_ = supervised_log_probs(hidden, labels, head, chunk=64)
    assert max(saved) < 300 * 4000 / 10, saved
    log_probs.sum().backward()
    assert hidden.grad is not None


def test_frozen_head_cast_is_kept_between_steps_and_renewed_when_the_weight_changes():
    """Under autocast a frozen head's bf16 cast is made once, not at every step; an in-place change of the weight
    (a loaded checkpoint, a merged adapter) or a new tensor behind it gives a fresh cast, never stale values."""
    import torch

    from simme_common.supervised_loss import supervised_log_probs

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False).requires_grad_(False)
    hidden, labels = torch.randn(1, 6, 16), torch.randint(0, 50, (1, 6))

    def scored(layer):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return supervised_log_probs(hidden, labels, layer)[0]

    def uncached():  # the same weight values behind a Parameter that has no cast kept yet
        reference = torch.nn.Linear(16, 50, bias=False).requires_grad_(False)
        reference.weight.data = head.weight.detach().clone()
        return scored(reference)

    first = scored(head)
    cast = head.weight._simme_cast[1]
    assert cast.dtype == torch.bfloat16 and torch.equal(scored(head), first) and head.weight._simme_cast[1] is cast
    with torch.no_grad():
        head.weight.mul_(3)
    assert torch.equal(scored(head), uncached()) and not torch.equal(scored(head), first)
    head.weight.data = torch.randn(50, 16)  # same Parameter, new storage
    assert torch.equal(scored(head), uncached())
