"""load_twin: the base model with the adapter on the fastest measured backend (llama.cpp on CPU, transformers on CUDA)."""

from __future__ import annotations

import os
import time
from typing import Any

from ..models import adapter_base_model, load_twin_tokenizer, load_twin_transformers, resolve_adapter, resolve_base_model
from ..runtime import UserError
from .llama_cpp import _load_llama_cpp
from .twin import ModelThread, TwinModel


QUANT_CHOICES = ("4bit", "8bit", "none", "iq4_nl", "q4_0", "q4_k_m", "q8_0", "f16", "f32")  # bnb on CUDA; GGUF types on CPU


def load_twin(base_model: str | None = None, adapter: str | None = None, backend: str = "auto",
              quantization: str | None = None, cache_size: int = 64, n_threads: int | None = None) -> TwinModel:
    """Load the twin for the app: base (resolve_base_model) + PEFT LoRA adapter, on the fastest measured backend.

    Args:
        base_model: base id/path; None = the adapter's recorded base if reachable, else the bundled SmolLM2.
        adapter: PEFT LoRA dir or Hub id (None = base only); a missing one raises UserError.
        backend: "auto" (CUDA -> transformers + bitsandbytes; CPU -> llama.cpp when it converts, else transformers),
            "transformers" or "llama.cpp".
        quantization: CUDA "4bit" (NF4, default) | "8bit" | "none"; CPU transformers "none" | "int8" (dynamic);
            llama.cpp "q4_0" | "iq4_nl" | "q4_k_m" | "q8_0" | "f16" | "f32" (default: default_gguf_quant). Default from
            env SIMME_QUANT.
        cache_size: entries of the reply LRU cache (0 turns it off).
        n_threads: llama.cpp threads (default: all cores).
    Returns:
        A TwinModel.
    """
    import torch

    start = time.perf_counter()
    adapter = resolve_adapter(adapter)
    base = resolve_base_model(base_model or adapter_base_model(adapter))
    tokenizer = load_twin_tokenizer(base, adapter)
    quant = (quantization or os.environ.get("SIMME_QUANT") or "").lower() or None
    cuda = torch.cuda.is_available()
    if backend not in ("auto", "transformers", "llama.cpp"):
        raise UserError(f"backend must be auto, transformers or llama.cpp, got {backend!r}")
    info: dict[str, Any] = {"base": base, "adapter": adapter, "device": "cuda" if cuda else "cpu"}
    if backend == "llama.cpp" or (backend == "auto" and not cuda):
        try:
            llama_thread = ModelThread()
            llama, gguf_info = llama_thread.call(lambda: _load_llama_cpp(base, adapter, tokenizer, quant, n_threads))
        except (ImportError, NotImplementedError) as err:  # auto: fall back to transformers
            if backend == "llama.cpp":
                raise UserError(f"backend llama.cpp is unavailable: {err} (install llama-cpp-python; Llama-architecture BPE models only)") from None
            info["llama_cpp_unavailable"] = str(err)
        else:
            info.update(gguf_info, load_seconds=round(time.perf_counter() - start, 2))
            return TwinModel(tokenizer, "llama.cpp", info, llama=llama, cache_size=cache_size, llama_thread=llama_thread)
    quant = quant or ("4bit" if cuda else "none")
    model = load_twin_transformers(base, adapter, tokenizer, quant)
    info.update(quantization=quant, load_seconds=round(time.perf_counter() - start, 2))
    return TwinModel(tokenizer, "transformers", info, model=model, cache_size=cache_size)
