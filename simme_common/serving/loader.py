"""load_twin: the base model with the adapter on the fastest measured backend (llama.cpp on CPU, transformers on CUDA)."""

from __future__ import annotations

import time
from typing import Any

from ..models import AdapterRef, adapter_base_model, load_model, load_twin_tokenizer, resolve_adapter, resolve_base_model
from ..runtime import UserError
from .llama_cpp import LlamaCppOptions, _load_llama_cpp
from .model_thread import ModelThread
from .twin import TwinModel


def load_twin(base_model: str | None = None, adapter: str | AdapterRef | None = None, backend: str = "auto",
              quantization: str | None = None, cache_size: int = 64,
              llama: LlamaCppOptions | None = None) -> TwinModel:
    """Load the twin for the app: base (resolve_base_model) + PEFT LoRA adapter, on the fastest measured backend.

    Args:
        base_model: base id/path; None = the adapter's recorded base if reachable, else the bundled SmolLM2.
        adapter: PEFT LoRA dir, Hub id or AdapterRef (None = base only); a missing one raises UserError.
        backend: "auto" (CUDA -> transformers + bitsandbytes; CPU -> llama.cpp when it converts, else transformers),
            "transformers" or "llama.cpp".
        quantization: CUDA "4bit" (NF4, default) | "8bit" | "none"; CPU transformers "none" | "int8" (dynamic);
            llama.cpp "q4_0" | "iq4_nl" | "q4_k_m" | "q8_0" | "f16" | "f32" (default: default_gguf_quant).
        cache_size: entries of the reply LRU cache (0 turns it off).
        llama: settings of the llama.cpp backend (threads, context, GGUF cache, BF16 prefill, batched decoding).
    Returns:
        A TwinModel.
    """
    import torch

    start = time.perf_counter()
    ref = resolve_adapter(adapter)
    base = resolve_base_model(base_model or adapter_base_model(ref))
    tokenizer = load_twin_tokenizer(base, ref)
    quant = (quantization or "").lower() or None
    cuda = torch.cuda.is_available()
    if backend not in ("auto", "transformers", "llama.cpp"):
        raise UserError(f"backend must be auto, transformers or llama.cpp, got {backend!r}")
    info: dict[str, Any] = {"base": base, "adapter": str(ref) if ref else None, "device": "cuda" if cuda else "cpu"}
    if backend == "llama.cpp" or (backend == "auto" and not cuda):
        options = llama or LlamaCppOptions()
        try:
            llama_thread = ModelThread()
            model, gguf_info = llama_thread.call(lambda: _load_llama_cpp(base, ref, tokenizer, quant, options))
        except (ImportError, NotImplementedError) as err:  # auto: fall back to transformers
            if backend == "llama.cpp":
                raise UserError(f"backend llama.cpp is unavailable: {err} (install llama-cpp-python; Llama-architecture BPE models only)") from None
            info["llama_cpp_unavailable"] = str(err)
        else:
            info.update(gguf_info, load_seconds=round(time.perf_counter() - start, 2))
            return TwinModel(tokenizer, "llama.cpp", info, llama=model, cache_size=cache_size, llama_thread=llama_thread,
                             max_batch=options.max_batch, max_waiting=options.max_waiting)
    quant = quant or ("4bit" if cuda else "none")
    model = load_twin_transformers(base, ref, tokenizer, quant)
    info.update(quantization=quant, load_seconds=round(time.perf_counter() - start, 2))
    return TwinModel(tokenizer, "transformers", info, model=model, cache_size=cache_size)


def load_twin_transformers(base: str, adapter: str | AdapterRef | None, tokenizer, quant: str = "none",
                           device: str | None = None):
    """Base model (+ LoRA) for transformers: bnb 4/8-bit with the adapter on top on CUDA, merged fp32 (or dynamic
    int8) on CPU; device="cpu" keeps it on the CPU of a CUDA machine."""
    import torch

    if not torch.cuda.is_available() or device == "cpu":
        model = load_model(base, tokenizer, adapter, dtype="float32", device_map={"": "cpu"}, merge=True).eval()
        if quant == "int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        return model
    quantization_config = None
    if quant in ("4bit", "8bit"):
        from transformers import BitsAndBytesConfig

        quantization_config = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
            if quant == "4bit" else BitsAndBytesConfig(load_in_8bit=True)
        )
    # merged weights (no LoRA matmuls per token) unless the base is quantized: then the adapter stays on top
    return load_model(base, tokenizer, adapter, dtype="bfloat16", device_map={"": 0},
                      quantization_config=quantization_config, merge=True).eval()
