"""Logits and loss only at supervised (owner) positions, on every device.

TRL's SFTTrainer patches the model with a fused LM head (`trl.trainer.utils.add_fused_lm_head`) that, on CPUs,
projects *every* position through the LM head and folds the [positions x vocabulary] tiles in torch: with
assistant-only loss most positions are friends' words and the system prompt, and the 49k-row head is ~20 % of
SmolLM2-135M's FLOPs, plus the elementwise passes over the full vocabulary. `compact_lm_head` re-patches that
forward so only positions whose next-token label is not -100 reach the head; the loss, its gradients and the
logged entropy / token accuracy are those of the full computation (tests/test_supervised_loss.py).
"""

from __future__ import annotations

import functools
import types


def _supported(model) -> str | None:
    """Why the compact head can't stand in for TRL's on this model (None: it can)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if config is not model.config:
        return "a multimodal model"
    for name in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        if getattr(config, name, None) not in (None, 1.0):
            return f"its config's {name}"
    if getattr(config, "output_router_logits", False):
        return "a mixture-of-experts router loss"
    return None


def supervised_log_probs(hidden_states, labels, lm_head):
    """(log-prob of each label, entropy, label is top-1) at the positions whose label is not -100, as flat vectors.

    `hidden_states` [B, T, H] and `labels` [B, T] are already aligned (label t is the token after position t).
    The head runs on the selected rows only; log-softmax is taken in fp32 whatever the autocast dtype.
    """
    import torch

    mask = labels != -100
    logits = lm_head(hidden_states[mask]).float()  # [N, V], N = supervised positions only
    log_probs = torch.log_softmax(logits, dim=-1)
    target = labels[mask]
    token_log_probs = log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
    with torch.no_grad():  # TRL logs these; they get no gradient
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        is_top1 = logits.argmax(-1) == target
    return token_log_probs, entropy, is_top1, mask


def compact_lm_head(model) -> str | None:
    """Make `model(..., labels=, fused_lm_head=True)` score supervised positions only; returns why not, or None.

    `model` is the causal LM TRL patched (for a PEFT model: `get_base_model()`). Calls without `fused_lm_head`,
    and those TRL's own head handles specially (pre-shifted labels under sequence parallelism), go to TRL's forward.
    """
    reason = _supported(model)
    if reason is not None:
        return f"supervised-only LM head not used: {reason}"
    from trl.trainer.utils import FusedCausalLMOutput

    previous = model.forward  # TRL's fused forward, bound to the model

    @functools.wraps(type(model).forward)  # generate() validates its kwargs against the signature
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head or shift_labels is not None or labels is None:
            return previous(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                            num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        lm_head = self.get_output_embeddings()
        shifted = labels[:, 1:].to(hidden.device)
        token_log_probs, entropy, is_top1, mask = supervised_log_probs(hidden, shifted, lm_head)
        # Scattered back to [B, T-1] with zeros elsewhere, the shape and convention of TRL's output
        log_probs = token_log_probs.new_zeros(mask.shape).masked_scatter(mask, token_log_probs)
        denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / denominator,
            log_probs=log_probs,
            entropy=entropy.new_zeros(mask.shape).masked_scatter(mask, entropy),
            is_top1=is_top1.new_zeros(mask.shape).masked_scatter(mask, is_top1),
            label_mask=mask,
        )

    model.forward = types.MethodType(forward, model)
    return None
