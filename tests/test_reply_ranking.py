"""03's context-fit term (--reply_ranking_weight): it ranks by 04's Hits@1 score, its gradients are those of the
plain per-sequence computation, and a run logs it.

Run: .venv/bin/python -m pytest -q tests/test_reply_ranking.py
"""

from __future__ import annotations

import json

import simme_common as sc
from simme_common.reply_ranking import distractor_pairs, last_reply_spans, ranking_term
from simme_common.supervised_loss import compact_lm_head

from train_helpers import SMOKE, run_train, user_error


def _batch():
    """Three right-padded rows; row 0 has two trained runs (only its last is its reply), row 2 is padding after 9."""
    import torch

    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 250, (3, 20), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 9:] = 0
    labels = torch.full_like(input_ids, -100)
    labels[0, 5:8] = input_ids[0, 5:8]
    labels[0, 12:17] = input_ids[0, 12:17]
    labels[1, 10:20] = input_ids[1, 10:20]
    labels[2, 6:9] = input_ids[2, 6:9]
    return input_ids, attention_mask, labels


def test_last_reply_spans_and_in_batch_distractors():
    import torch

    input_ids, _, labels = _batch()
    spans = last_reply_spans(labels[:, 1:] != -100)
    # shifted position p predicts token p + 1: the labelled tokens 12..16 are predicted from positions 11..15
    assert spans == [(11, 16), (9, 19), (5, 8)]
    assert distractor_pairs(input_ids, spans) == [(0, 1), (1, 2), (2, 0)]
    assert last_reply_spans(torch.zeros(2, 5, dtype=torch.bool)) == [None, None]
    same = input_ids.clone()
    same[1, 10:13] = same[2, 6:9]  # rows 1 and 2 given the same 3-token reply
    spans_same = [(11, 16), (9, 12), (5, 8)]
    assert distractor_pairs(same, spans_same) == [(0, 1), (2, 0)]


def _reference(model, input_ids, attention_mask, spans, pairs):
    """softplus(mean log p(reply j | context i) - mean log p(reply i | context i)) over the pairs, each sequence on
    its own through the model's full logits."""
    import torch

    def score(context, reply):
        ids = torch.cat([context, reply])[None]
        log_probs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        n = len(context)
        return log_probs[n - 1:, :].gather(-1, ids[0, n:, None]).mean()

    losses = []
    for i, j in pairs:
        (si, ei), (sj, ej) = spans[i], spans[j]
        context = input_ids[i, :si + 1]
        real, borrowed = input_ids[i, si + 1:ei + 1], input_ids[j, sj + 1:ej + 1]
        losses.append(torch.nn.functional.softplus(score(context, borrowed) - score(context, real)))
    return torch.stack(losses).mean()


def test_ranking_term_equals_per_sequence_scores_and_gradients(tiny_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    assert compact_lm_head(base) is None
    input_ids, attention_mask, labels = _batch()
    spans = last_reply_spans(labels[:, 1:] != -100)
    pairs = distractor_pairs(input_ids, spans)

    model.zero_grad()
    captured = {}
    base._simme_after_forward = lambda m, kw, ids, lp, mask: captured.update(
        term=ranking_term(m, ids, lp, mask, kw))
    model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    del base._simme_after_forward
    loss, accuracy = captured["term"]
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    model.zero_grad()
    expected = _reference(model, input_ids, attention_mask, spans, pairs)
    expected.backward()
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-5, atol=1e-6)
    assert 0 <= accuracy <= 1
    nonzero = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
            nonzero += bool(p.grad.abs().sum() > 0)
    assert nonzero > 0

    # 04's own Hits@1 scorer orders the first pair as the term does
    (i, j), (si, ei), (sj, ej) = pairs[0], spans[pairs[0][0]], spans[pairs[0][1]]
    with torch.no_grad():
        scores = sc.candidate_loglik(model, input_ids[i, :si + 1].tolist(),
                                     [input_ids[i, si + 1:ei + 1].tolist(), input_ids[j, sj + 1:ej + 1].tolist()])
    single = _reference(model, input_ids, attention_mask, spans, pairs[:1])
    torch.testing.assert_close(torch.tensor(float(single.detach())), torch.nn.functional.softplus(torch.tensor(scores[1] - scores[0])),
                               rtol=1e-4, atol=1e-5)


def test_training_with_reply_ranking_logs_the_term_and_moves_lora(tiny_model_dir, prepared_dir, tmp_path, capsys):
    out = tmp_path / "adapter"
    base = ["--config", SMOKE, "--model_name_or_path", str(tiny_model_dir), "--input_dir", str(prepared_dir)]
    trainer = run_train(base + ["--output_dir", str(out), "--reply_ranking_weight", "1.0", "--max_length", "1024",
                                "--logging_steps", "1"])
    logged = [h for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert logged and all(0 <= h["reply_rank_accuracy"] <= 1 and h["reply_rank_loss"] > 0 for h in logged)
    assert trainer.state.global_step > 0
    for bad in ("-1", "nan"):
        assert "--reply_ranking_weight must be 0 or above" in user_error(
            base + ["--output_dir", str(tmp_path / "x"), "--reply_ranking_weight", bad], capsys)
    assert "--per_device_train_batch_size 2 or more" in user_error(
        base + ["--output_dir", str(tmp_path / "x"), "--reply_ranking_weight", "1", "--per_device_train_batch_size", "1"], capsys)


def test_reply_ranking_problems_name_the_conflicting_option():
    from simme_common.reply_ranking import reply_ranking_problem

    assert reply_ranking_problem(0.0, 1, True) is None  # off: nothing to check
    assert reply_ranking_problem(0.3, 8, False) is None
    assert "--preference_data" in reply_ranking_problem(1.0, 8, True)
    assert "2 or more" in reply_ranking_problem(1.0, 1, False)
    assert "0 or above" in reply_ranking_problem(float("nan"), 8, False)
