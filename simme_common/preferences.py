"""Learning from preferences on top of the current twin: the app's A/B picks (DPO), its 👍/👎 ratings (KTO), and, without
human feedback, self-play pairs (SPIN-style: the owner's real reply is chosen, the twin's own sample is rejected)."""

from __future__ import annotations

import dataclasses
import random
from typing import Any
from pathlib import Path

from .chat_format import OWNER_ROLE, SILENT_REPLY, split_target
from .runtime import UserError

PREFERENCE_STORE = "preferences"  # the app's A/B picks: prompt, chosen, rejected
RATING_STORE = "ratings"          # the app's 👍/👎: prompt, completion, label
SELF_PLAY_STORE = "self_play"     # pairs built by build_self_play: prompt, chosen, rejected
PAIR_COLUMNS = ("prompt", "chosen", "rejected")
RATING_COLUMNS = ("prompt", "completion", "label")


def _load_store(path: Path, columns: tuple[str, ...]):
    from datasets import load_from_disk

    try:
        data = load_from_disk(str(path))
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not a saved dataset ({err.__class__.__name__}); it should be a feedback store "
                        "written by the app (SIMME_FEEDBACK_DIR) or by build_self_play") from None
    missing = [c for c in columns if c not in data.column_names]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(data.column_names)})")
    return data.select_columns(list(columns))


def load_preference_data(directory: str | Path) -> dict:
    """{"dpo": pairs or None, "kto": ratings or None} from a feedback directory (the app's stores and/or self-play)."""
    from datasets import concatenate_datasets

    root = Path(directory)
    if not root.is_dir():
        raise UserError(f"--preference_data {root}: not a directory")
    pairs = [_load_store(root / s, PAIR_COLUMNS) for s in (PREFERENCE_STORE, SELF_PLAY_STORE) if (root / s).is_dir()]
    ratings = _load_store(root / RATING_STORE, RATING_COLUMNS) if (root / RATING_STORE).is_dir() else None
    if not pairs and ratings is None:
        raise UserError(f"--preference_data {root}: no {PREFERENCE_STORE}/, {RATING_STORE}/ or {SELF_PLAY_STORE}/ "
                        "store in it (run the app with SIMME_FEEDBACK_DIR, or build self-play pairs)")
    return {"dpo": concatenate_datasets(pairs) if pairs else None, "kto": ratings}


def self_play_contexts(train, n: int, seed: int) -> list[tuple[list[dict], str]]:
    """Up to `n` (context, real owner reply) pairs drawn from the *training* split only (never validation/test),
    skipping silent targets, which have no words to prefer."""
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    picked = []
    for i in order:
        context, real = split_target(train[i]["messages"])
        if real.strip() and real != SILENT_REPLY:
            picked.append((context, real))
            if len(picked) == n:
                break
    return picked


def self_play_pairs(contexts: list[tuple[list[dict], str]], samples: list[str]) -> list[dict]:
    """DPO rows: the real reply chosen over the twin's sample; a sample equal to the real reply teaches nothing."""
    rows = []
    for (context, real), sample in zip(contexts, samples, strict=True):
        if sample.strip() == real.strip():
            continue
        rows.append({"prompt": context, "chosen": [{"role": OWNER_ROLE, "content": real}],
                     "rejected": [{"role": OWNER_ROLE, "content": sample}]})
    return rows


def build_self_play(model, tokenizer, train, output_dir: str | Path, *, n: int, seed: int, max_new_tokens: int = 48,
                    temperature: float = 0.9) -> int:
    """Sample the twin on `n` training contexts and save the pairs as a `self_play` store under `output_dir`."""
    from datasets import Dataset

    from .eval_generation import generate_replies

    contexts = self_play_contexts(train, n, seed)
    replies = generate_replies(model, tokenizer, [c for c, _ in contexts], max_new_tokens=max_new_tokens,
                               temperature=temperature, seed=seed, desc="self-play samples")
    rows = self_play_pairs(contexts, [r["text"] for r in replies])
    if not rows:
        raise UserError("self-play built no pairs: every sampled reply equals the real one")
    Dataset.from_list(rows).save_to_disk(str(Path(output_dir) / SELF_PLAY_STORE))
    return len(rows)


def preference_config(kind: str, sft_config, beta: float):
    """A DPOConfig or KTOConfig carrying every TrainingArguments value of the parsed SFTConfig (one set of flags)."""
    from transformers import TrainingArguments
    from trl import DPOConfig, KTOConfig

    shared = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    values = {k: getattr(sft_config, k) for k in shared if hasattr(sft_config, k)}
    values.pop("logging_dir", None)  # derived from output_dir
    if values.get("bf16") and not values.get("use_cpu"):
        from transformers.utils import is_torch_bf16_gpu_available

        # dtype auto sets bf16 (CPU autocast) after SFTConfig's checks; a new config accepts it on CPU only with use_cpu
        values["use_cpu"] = not is_torch_bf16_gpu_available()
    cls = {"dpo": DPOConfig, "kto": KTOConfig}[kind]
    extra = {"beta": beta, "max_length": sft_config.max_length}
    if values.get("train_sampling_strategy") == "group_by_length":
        values["train_sampling_strategy"] = "random"  # preference rows have no input_ids to group by
    if kind == "kto":
        # KTO estimates its KL term from the other completions of a batch, so it needs at least two per device.
        values["per_device_train_batch_size"] = max(2, values.get("per_device_train_batch_size") or 2)
        values["train_sampling_strategy"] = "sequential"  # each KL completion is paired with its batch neighbours
    return cls(**values, **extra)


def preference_trainer(kind: str, model, tokenizer, dataset, sft_config, beta: float = 0.1):
    """TRL's DPOTrainer or KTOTrainer on a PEFT twin: only its LoRA weights train, against a frozen copy of the
    same adapter as the reference (TRL adds it as the "ref" adapter)."""
    from trl import DPOTrainer, KTOTrainer

    if kind not in ("dpo", "kto"):
        raise UserError(f"--preference_loss {kind}: use dpo or kto")
    if kind == "kto" and len(set(dataset["label"])) < 2:
        raise UserError("KTO needs both 👍 and 👎 ratings; the ratings store has only one kind")
    trainer_cls = DPOTrainer if kind == "dpo" else KTOTrainer
    return trainer_cls(model=model, args=preference_config(kind, sft_config, beta), train_dataset=dataset,
                       processing_class=tokenizer)


def build_preference_run(directory: str | Path, loss: str, beta: float, self_play: int, model, tokenizer, train,
                         sft_config) -> tuple[Any, dict]:
    """03's preference round: optionally build `self_play` pairs into `directory` first, then (trainer, info) for
    DPO on pairs or KTO on ratings (`loss` "auto": DPO when there are pairs)."""
    if self_play:
        Path(directory).mkdir(parents=True, exist_ok=True, mode=0o700)
        build_self_play(model, tokenizer, train, directory, n=self_play, seed=sft_config.seed)
    data = load_preference_data(directory)
    kind = loss if loss != "auto" else ("dpo" if data["dpo"] is not None else "kto")
    if kind not in ("dpo", "kto"):
        raise UserError(f"--preference_loss {loss}: use auto, dpo or kto")
    if data[kind] is None:
        raise UserError(f"--preference_loss {kind}: {directory} has no "
                        f"{'preferences/ or self_play/' if kind == 'dpo' else 'ratings/'} store")
    trainer = preference_trainer(kind, model, tokenizer, data[kind], sft_config, beta)
    return trainer, {"preference loss": kind, "preference rows": len(data[kind])}
