"""04's gate: directions and tolerances from metric_defs, paired intervals, a metric missing now fails, the split
fingerprint, the human fool rate read from the app's blind-guess store.

Run: .venv/bin/python -m pytest -q tests/test_gate.py
"""

import pytest

from simme_common import gate as sg
from simme_common.metric_defs import GATE_TOLERANCES, METRIC_BY_KEY, METRICS
from simme_common.stage_io import append_to_disk_dataset


def _card(**values):
    return {"finetuned": values}


def test_every_metric_declares_a_direction_and_gated_ones_a_tolerance():
    for m in METRICS:
        assert m.direction in ("higher", "lower", "none"), m.key
        assert (m.tolerance is None) == (m.direction == "none"), m.key
    assert GATE_TOLERANCES["perplexity"] == ("lower", 0.05, "rel")


def test_gate_follows_each_metrics_direction_and_tolerance():
    rows = {r["metric"]: r for r in sg.compare_scorecards(
        _card(perplexity=10.8, rouge_l=0.30, repetition_rate=0.10, hits_at_1=0.51),
        _card(perplexity=10.0, rouge_l=0.40, repetition_rate=0.02, hits_at_1=0.50))}
    assert rows["perplexity"]["status"] == "REGRESSED"  # +8 % > 5 % relative, lower is better
    assert rows["rouge_l"]["status"] == "REGRESSED" and rows["repetition_rate"]["status"] == "REGRESSED"
    assert rows["hits_at_1"]["status"] == "better"
    assert rows["mauve"]["status"] == "n/a"  # in neither scorecard


def test_a_metric_in_the_baseline_and_missing_now_fails_the_gate():
    rows = sg.compare_scorecards(_card(rouge_l=0.4), _card(rouge_l=0.4, owner_likeness=0.7))
    status = {r["metric"]: r["status"] for r in rows}
    assert status["owner_likeness"] == "MISSING" and not sg.gate_passed(rows)
    assert sg.gate_passed(sg.compare_scorecards(_card(rouge_l=0.4, owner_likeness=0.7), _card(rouge_l=0.4)))


def test_a_paired_interval_that_straddles_zero_is_noise_not_a_regression():
    current, baseline = _card(rouge_l=0.30), _card(rouge_l=0.40)
    noisy = sg.compare_scorecards(current, baseline, intervals={"rouge_l": [-0.25, 0.05]})
    sure = sg.compare_scorecards(current, baseline, intervals={"rouge_l": [-0.18, -0.02]})
    assert next(r for r in noisy if r["metric"] == "rouge_l")["status"] == "ok"
    assert next(r for r in sure if r["metric"] == "rouge_l")["status"] == "REGRESSED"


def test_paired_interval_of_a_constant_shift_is_that_shift():
    a, b = [0.5, 0.7, 0.2, 0.9, 0.4, 0.6], [0.4, 0.6, 0.1, 0.8, 0.3, 0.5]
    mean = lambda v: lambda idx: sum(v[i] for i in idx) / len(idx)  # noqa: E731
    lo, hi = sg.paired_interval(mean(a), mean(b), len(a), n_boot=200)
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)


def test_split_interval_resamples_the_paired_splits():
    shift = sg.split_interval([0.9, 0.7, 0.8, 0.6], [0.8, 0.6, 0.7, 0.5], n_boot=200)
    assert shift == pytest.approx([0.1, 0.1])
    # One split's MAUVE swings by ~0.15 on 99 contexts: deltas of -0.4 .. +0.25 around a -0.075 mean are noise.
    current, baseline = [0.4, 0.95, 0.5, 1.0, 0.6, 0.95], [0.8, 0.7, 0.9, 0.8, 0.75, 0.9]
    noisy = sg.split_interval(current, baseline, n_boot=500)
    assert noisy[0] < 0 < noisy[1]
    cards = _card(mauve=sum(current) / 6), _card(mauve=sum(baseline) / 6)
    assert next(r for r in sg.compare_scorecards(*cards) if r["metric"] == "mauve")["status"] == "REGRESSED"
    rows = sg.compare_scorecards(*cards, intervals={"mauve": noisy})
    assert next(r for r in rows if r["metric"] == "mauve")["status"] == "ok"
    assert sg.split_interval([0.5], [0.4]) is None and sg.split_interval([0.5, 0.6], None) is None


def test_split_fingerprint_ignores_order_and_sees_any_change():
    s1 = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]]
    s2 = [[{"role": "user", "content": "hey"}, {"role": "assistant", "content": "yo"}]]
    assert sg.split_fingerprint(s1 + s2) == sg.split_fingerprint(s2 + s1)
    assert sg.split_fingerprint(s1) != sg.split_fingerprint(s2)


def test_fool_rate_reads_the_apps_blind_guess_store_with_a_wilson_interval(tmp_path):
    rows = ([{"round_id": f"r{i}", "shown": "twin", "guessed": "real" if i < 3 else "twin", "timestamp": float(i)} for i in range(10)]
            + [{"round_id": "x", "shown": "real", "guessed": "real", "timestamp": 11.0}])
    append_to_disk_dataset(tmp_path / "blind_guesses", rows)
    out = sg.fool_rate(str(tmp_path))  # the feedback folder above the store works too
    assert out["fool_rate"] == pytest.approx(0.3) and out["n_twin_shown"] == 10 and out["real_recognized_rate"] == 1.0
    lo, hi = out["ci"]
    assert 0.05 < lo < 0.3 < hi < 0.65


def test_fool_rate_without_a_store_is_a_user_error(tmp_path):
    from simme_common.runtime import UserError

    with pytest.raises(UserError, match="blind_guesses"):
        sg.fool_rate(str(tmp_path))


def test_gated_directions_match_metric_definitions():
    for key, (direction, _, _) in GATE_TOLERANCES.items():
        assert METRIC_BY_KEY[key].direction == direction


def test_scorecard_header_names_the_split_it_scored():
    from simme_common.scorecard import scorecard_markdown

    card = {"n_examples": 99, "metrics": {}, "settings": {"eval_split": "validation"}}
    assert "99 held-out validation contexts." in scorecard_markdown(card)
    assert "99 held-out test contexts." in scorecard_markdown({**card, "settings": {"eval_split": "test"}})
