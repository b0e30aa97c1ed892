"""Logits and loss only at supervised (owner) positions, on every device.

TRL's SFTTrainer patches the model with a fused LM head (`trl.trainer.utils.add_fused_lm_head`) that, on CPUs,
projects *every* position through the LM head and folds the [positions x vocabulary] tiles in torch: with
assistant-only loss most positions are friends' words and the system prompt, and the 49k-row head is ~20 % of
SmolLM2-135M's FLOPs, plus the elementwise passes over the full vocabulary. `compact_lm_head` re-patches that
forward so only positions whose next-token label is not -100 reach the head, a few rows at a time, so that no
[positions x vocabulary] tensor is kept for backward; the loss, its gradients and the logged entropy / token
accuracy are those of the full computation (tests/test_supervised_loss.py).
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


# Rows of the LM head scored at once: a [128 x 49k] fp32 tile is 25 MB, so the head's memory no longer grows with
# the supervised tokens of a batch (several [rows x 49k] tensors of ~140 MB each at ~700 rows); as fast as one pass.
HEAD_CHUNK_ROWS = 128


def _cast_weight(weight, dtype):
    """`weight` in `dtype`; a frozen weight's cast is kept on it between steps (a tied 49k-row head: ~40 ms a step on
    2 cores) and made again only when its values change."""
    if weight.dtype == dtype or weight.requires_grad:
        return weight.to(dtype)
    key = (weight._version, weight.data_ptr(), dtype)  # in-place updates bump the version; `.data =` moves the pointer
    cached = getattr(weight, "_simme_cast", None)
    if cached is None or cached[0] != key:
        cached = (key, weight.detach().to(dtype))
        weight._simme_cast = cached
    return cached[1]


@functools.cache
def _chunked_head_function():
    import torch

    class ChunkedHead(torch.autograd.Function):
        """log p(label) of each row through a bias-free linear head, [chunk x vocabulary] at a time.

        The gradient w.r.t. the hidden rows is formed in the forward pass, chunk by chunk, as (one-hot - softmax) @ W
        per row; backward only scales it by each row's incoming gradient, so no [rows x vocabulary] tensor outlives
        its chunk. A trainable head weight (full fine-tuning) gets its gradient by recomputing the chunks in backward.
        """

        @staticmethod
        def forward(ctx, hidden, weight, target, dtype, chunk):
            w, h = _cast_weight(weight, dtype), hidden.to(dtype)
            n = h.shape[0]
            token_log_probs = torch.empty(n, dtype=torch.float32, device=h.device)
            entropy = torch.empty_like(token_log_probs)
            is_top1 = torch.empty(n, dtype=torch.bool, device=h.device)
            unit_grad = torch.empty(n, h.shape[1], dtype=torch.float32, device=h.device) if ctx.needs_input_grad[0] else None
            for start in range(0, n, chunk):
                rows, t = slice(start, start + chunk), target[start:start + chunk, None]
                logits = (h[rows] @ w.T).float()
                top_logit, top = logits.max(-1, keepdim=True)  # max and argmax in one pass
                logits -= top_logit  # exp() of shifted logits cannot overflow
                exp = logits.exp()
                total = exp.sum(-1)
                log_total = total.log()
                is_top1[rows] = top[:, 0] == t[:, 0]
                token_log_probs[rows] = logits.gather(1, t)[:, 0] - log_total
                entropy[rows] = log_total - torch.linalg.vecdot(exp, logits) / total
                if unit_grad is not None:  # d log p(label) / d hidden = W[label] - softmax @ W, normalized after the matmul
                    unit_grad[rows] = w[t[:, 0]].float() - (exp.to(dtype) @ w).float() / total[:, None]
            ctx.save_for_backward(unit_grad, hidden, weight, target)
            ctx.dtype, ctx.chunk = dtype, chunk
            ctx.mark_non_differentiable(entropy, is_top1)
            return token_log_probs, entropy, is_top1

        @staticmethod
        def backward(ctx, grad_log_probs, _grad_entropy, _grad_top1):
            unit_grad, hidden, weight, target = ctx.saved_tensors
            grad_hidden = (unit_grad * grad_log_probs[:, None]).to(hidden.dtype) if unit_grad is not None else None
            grad_weight = None
            if ctx.needs_input_grad[1]:
                w, h = _cast_weight(weight, ctx.dtype), hidden.to(ctx.dtype)
                grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
                for start in range(0, h.shape[0], ctx.chunk):
                    rows, t = slice(start, start + ctx.chunk), target[start:start + ctx.chunk, None]
                    probs = (h[rows] @ w.T).float().softmax(-1).neg_()
                    g = probs.scatter_add_(1, t, torch.ones_like(t, dtype=probs.dtype)) * grad_log_probs[rows, None]
                    grad_weight += (g.to(ctx.dtype).T @ h[rows]).float()
                grad_weight = grad_weight.to(weight.dtype)
            return grad_hidden, grad_weight, None, None, None

    return ChunkedHead


def supervised_log_probs(hidden_states, labels, lm_head, chunk: int = HEAD_CHUNK_ROWS):
    """(log-prob of each label, entropy, label is top-1) at the positions whose label is not -100, as flat vectors.

    `hidden_states` [B, T, H] and `labels` [B, T] are already aligned (label t is the token after position t).
    The head runs on the selected rows only, in the autocast dtype when autocast is on; log-softmax is taken in
    fp32. A plain bias-free `nn.Linear` head is scored `chunk` rows at a time (`_chunked_head_function`); any other
    head (PEFT's trainable-token or LoRA wrappers) goes through its own forward on all selected rows at once.
    """
    import torch

    mask = labels != -100
    selected, target = hidden_states[mask], labels[mask]
    if type(lm_head) is torch.nn.Linear and lm_head.bias is None:
        device = selected.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else lm_head.weight.dtype
        token_log_probs, entropy, is_top1 = _chunked_head_function().apply(selected, lm_head.weight, target, dtype, chunk)
        return token_log_probs, entropy, is_top1, mask
    logits = lm_head(selected).float()  # [N, V], N = supervised positions only
    log_probs = torch.log_softmax(logits, dim=-1)
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
        hook = getattr(self, "_simme_after_forward", None)  # reply_ranking's extra term reads this batch's scores
        if hook is not None:
            hook(self, kwargs, kwargs.get("input_ids", args[0] if args else None), log_probs, mask)
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
