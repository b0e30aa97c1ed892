"""Does it sound like the owner: an authorship classifier (owner vs the other participants), an automated Turing
test (real vs generated replies to the same contexts) and MAUVE, all on scikit-learn / mauve-text."""

from __future__ import annotations

import re

from .chat_format import SILENT_REPLY
from .text_features import extract_emojis

_SPEAKER_RE = re.compile(r"^[^:\n]{1,40}: ")  # group turns of others start with "Name: "


def _style_row(text: str) -> list[float]:
    """Style features a character n-gram model misses: length, bubbles, emoji, case, punctuation, digits."""
    import math

    n = max(1, len(text))
    return [math.log1p(len(text)), text.count("\n"), len(extract_emojis(text)), sum(c.isupper() for c in text) / n,
            sum(c in "!?.," for c in text) / n, sum(c.isdigit() for c in text) / n, float(text.islower())]


def _style_rows(texts) -> list[list[float]]:
    """`_style_row` of every text."""
    return [_style_row(t) for t in texts]


def _pipeline(seed: int):
    """Character 2-4-gram TF-IDF + scaled style features -> logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import FeatureUnion, Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    style = Pipeline([("rows", FunctionTransformer(_style_rows)), ("scale", StandardScaler())])
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)
    return Pipeline([("features", FeatureUnion([("chars", chars), ("style", style)])),
                     ("clf", LogisticRegression(max_iter=2000, C=2.0, class_weight="balanced", random_state=seed))])


def strip_speaker(text: str) -> str:
    """A group turn without its "Name: " prefix (the classifier must learn style, not names)."""
    return _SPEAKER_RE.sub("", text)


def train_owner_classifier(owner_turns: list[str], other_turns: list[str], seed: int = 42, max_per_class: int = 20000):
    """Owner-vs-others classifier on the train split's turns; None when either class has fewer than 5 turns."""
    import random

    own = [t for t in owner_turns if t.strip() and t.strip() != SILENT_REPLY]
    oth = [strip_speaker(t) for t in other_turns if strip_speaker(t).strip()]
    if len(own) < 5 or len(oth) < 5:
        return None
    rng = random.Random(seed)  # a long history is subsampled: the classifier saturates long before 20k turns
    own, oth = (rng.sample(x, max_per_class) if len(x) > max_per_class else x for x in (own, oth))
    model = _pipeline(seed)
    model.fit(own + oth, [1] * len(own) + [0] * len(oth))
    return model


def owner_probabilities(model, replies: list[str]) -> list[float | None]:
    """P(owner) per reply; an empty or silent reply counts 0; None everywhere without a classifier."""
    if model is None:
        return [None] * len(replies)
    texts = ["" if r.strip() == SILENT_REPLY else r.strip() for r in replies]
    scored = [i for i, t in enumerate(texts) if t]
    out: list[float | None] = [0.0] * len(texts)
    if scored:
        for i, p in zip(scored, model.predict_proba([texts[i] for i in scored])[:, 1]):
            out[i] = float(p)
    return out


def discriminator_auc(real: list[str], generated: list[str], seed: int = 42, folds: int = 5) -> float | None:
    """Cross-validated ROC AUC of real-vs-generated; a context's two replies share a fold. None below 10 pairs."""
    import numpy as np
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    n = min(len(real), len(generated))
    if n < 10:
        return None
    texts = [("" if t.strip() == SILENT_REPLY else t) for t in list(real[:n]) + list(generated[:n])]
    labels = np.asarray([1] * n + [0] * n)
    groups = np.asarray(list(range(n)) * 2)
    scores = np.zeros(2 * n)
    for train, test in GroupKFold(n_splits=min(folds, n)).split(texts, labels, groups):
        if len(set(labels[train])) < 2:
            return None
        model = _pipeline(seed).fit([texts[i] for i in train], labels[train])
        scores[test] = model.predict_proba([texts[i] for i in test])[:, 1]
    return float(roc_auc_score(labels, scores))


def halves(n: int, seed: int = 42) -> tuple[list[int], list[int]]:
    """Two disjoint seeded halves of range(n): MAUVE and the real column's Turing test compare across them."""
    import random

    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[: n // 2]), sorted(order[n // 2:])


def mauve_score(p_features, q_features, seed: int = 42) -> float | None:
    """MAUVE of two feature sets (mauve-text, quantized with k-means); None below 10 texts per side."""
    import numpy as np

    if len(p_features) < 10 or len(q_features) < 10:
        return None
    import mauve

    out = mauve.compute_mauve(p_features=np.asarray(p_features, dtype=np.float32), q_features=np.asarray(q_features, dtype=np.float32),
                              seed=seed, verbose=False, num_buckets=max(2, min(len(p_features), len(q_features)) // 10))
    return float(out.mauve)
