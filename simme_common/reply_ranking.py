"""A context-fit term beside the LM loss (03 `--reply_ranking_weight`): each sample's real last owner reply must
score higher, after its own context, than another sample's owner reply does after that same context.

The LM loss on owner turns teaches mostly the owner's style, and style raises the likelihood of every owner reply
alike; 04's Hits@1 asks which of 20 owner replies fits a context. TransferTransfo (Wolf et al. 2019, the ConvAI2
winner) trained next-utterance classification against distractor replies beside its LM loss; here the distractor
is in-batch (the next sample's last owner reply) and the score is 04's: the mean per-token log-likelihood of the
reply and its end of turn. The term is softplus(score(distractor) - score(real)), averaged over the batch's pairs,
and costs one more forward and backward over each context with the borrowed reply (~2x the step).
"""

from __future__ import annotations

import types


def last_reply_spans(mask) -> list[tuple[int, int] | None]:
    """Per row of a [B, T-1] shifted-label mask: (start, end) of its last run of trained positions, or None.

    Shifted position p predicts token p + 1, so the run's tokens are input_ids[start + 1:end + 1] and its context
    is input_ids[:start + 1] (the reply's header included)."""
    from .training import trained_runs

    return [runs[-1] if (runs := trained_runs(row)) else None for row in mask.tolist()]


def distractor_pairs(input_ids, spans) -> list[tuple[int, int]]:
    """(row, donor row) pairs: each row with a reply borrows the next such row's reply (cyclically); rows whose
    replies are the same tokens are left out (the pair would carry no signal)."""
    rows = [i for i, s in enumerate(spans) if s is not None]
    pairs = []
    for k, i in enumerate(rows):
        j = rows[(k + 1) % len(rows)]
        (si, ei), (sj, ej) = spans[i], spans[j]
        if j != i and input_ids[i, si + 1:ei + 1].tolist() != input_ids[j, sj + 1:ej + 1].tolist():
            pairs.append((i, j))
    return pairs


def distractor_batch(input_ids, spans, pairs):
    """(input_ids, attention_mask, shifted labels) of context i + reply j for each (i, j) pair, right-padded;
    only the borrowed reply's positions are labelled."""
    import torch

    ids, labels = [], []
    for i, j in pairs:
        (si, _), (sj, ej) = spans[i], spans[j]
        context, reply = input_ids[i, :si + 1].tolist(), input_ids[j, sj + 1:ej + 1].tolist()
        ids.append(context + reply)
        labels.append([-100] * (len(context) - 1) + reply)
    width = max(len(r) for r in ids)
    out_ids = torch.zeros(len(ids), width, dtype=input_ids.dtype)
    attention = torch.zeros(len(ids), width, dtype=torch.long)
    out_labels = torch.full((len(ids), width - 1), -100, dtype=torch.long)
    for r, (row, lab) in enumerate(zip(ids, labels)):
        out_ids[r, :len(row)], attention[r, :len(row)], out_labels[r, :len(lab)] = torch.tensor(row), 1, torch.tensor(lab)
    device = input_ids.device
    return out_ids.to(device), attention.to(device), out_labels.to(device)


def ranking_term(causal_lm, input_ids, log_probs, mask, forward_kwargs):
    """(softplus(score distractor - score real) averaged over the pairs, share of pairs the real reply wins), or
    None when the batch holds fewer than two distinct replies. `log_probs` [B, T-1] are the real batch's label
    log-probs (zero where `mask` is False), with their graph; the distractors go through `causal_lm` here."""
    import torch

    from .supervised_loss import supervised_log_probs

    spans = last_reply_spans(mask)
    pairs = distractor_pairs(input_ids, spans)
    if not pairs:
        return None
    ids, attention, labels = distractor_batch(input_ids, spans, pairs)
    # Same model arguments as the real batch, on the new rows (position ids follow the new attention mask)
    kwargs = {k: v for k, v in forward_kwargs.items() if k not in ("input_ids", "attention_mask", "position_ids", "inputs_embeds")}
    hidden = causal_lm.base_model(input_ids=ids, attention_mask=attention, **kwargs).last_hidden_state[:, :-1]
    token_log_probs, _, _, picked = supervised_log_probs(hidden, labels, causal_lm.get_output_embeddings())
    rows = picked.nonzero()[:, 0]
    counts = picked.sum(-1).clamp(min=1)
    distractor = torch.zeros(len(pairs), dtype=token_log_probs.dtype, device=token_log_probs.device)
    distractor = distractor.index_add(0, rows, token_log_probs) / counts
    real = torch.stack([log_probs[i, spans[i][0]:spans[i][1]].mean() for i, _ in pairs])
    margin = real - distractor
    return torch.nn.functional.softplus(-margin).mean(), float((margin > 0).float().mean())


def reply_ranking_problem(weight: float, batch_size: int, preference_run: bool) -> str | None:
    """One sentence on a --reply_ranking_weight that can't work with the other options (None when it can)."""
    if not weight >= 0:  # NaN too
        return f"--reply_ranking_weight must be 0 or above, got {weight}"
    if weight and batch_size < 2:
        return ("--reply_ranking_weight borrows each sample's distractor reply from another sample of its batch: "
                "it needs --per_device_train_batch_size 2 or more")
    if weight and preference_run:
        return "--reply_ranking_weight adds to the SFT loss; --preference_data trains with DPO/KTO, drop one of them"
    return None


def add_reply_ranking(trainer, causal_lm, weight: float, lm_head_note: str | None) -> None:
    """Train `trainer` (an SFTTrainer whose `causal_lm` forward is `compact_lm_head`'s; `lm_head_note` is what that
    returned) on LM loss + `weight` x the ranking term; logs reply_rank_loss and reply_rank_accuracy (share of pairs
    the real reply wins) beside the loss."""
    from .runtime import UserError

    if lm_head_note:
        raise UserError(f"--reply_ranking_weight needs the supervised-only LM head, which this model can't use ({lm_head_note})")
    state: dict = {}

    def after_forward(model, kwargs, input_ids, log_probs, mask):
        if model.training and input_ids is not None and log_probs.requires_grad:
            state["term"] = ranking_term(model, input_ids, log_probs, mask, kwargs)

    causal_lm._simme_after_forward = after_forward
    inner = trainer.compute_loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        state.pop("term", None)
        result = inner(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        term = state.pop("term", None)
        if term is None:
            return result
        loss, accuracy = term
        self._metrics["train"]["reply_rank_loss"].append(loss.item())
        self._metrics["train"]["reply_rank_accuracy"].append(accuracy)
        # The LM loss is already divided over the accumulated micro-batches' tokens; this per-batch mean is too
        steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
        extra = weight * loss / steps
        return (result[0] + extra, result[1]) if return_outputs else result + extra

    trainer.compute_loss = types.MethodType(compute_loss, trainer)
