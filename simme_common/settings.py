"""The app's settings: its environment read once, at start-up, into one object that is passed down.

Library functions never read SIMME_* variables; the app (and benchmarks that serve like it) build AppSettings with
`from_env()` and hand its values to load_twin and the UI. Two documented exceptions: SIMME_CACHE locates the shared
model cache for every stage (runtime.simme_cache_dir, like HF_HOME), and the app hands SIMME_AMX_BF16_MIN_TOKENS to
our patched llama.cpp through the environment, which is the only way it reads it (serving/llama_cpp.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .runtime import UserError
from .serving.llama_cpp import LlamaCppOptions
from .stage_io import ADAPTER_DIR, ANALYSIS_DIR, PREPARED_DIR


@dataclass(frozen=True)
class AppSettings:
    """Every setting of the app; field `x` is the environment variable SIMME_X (`ENV_NAMES` lists exceptions)."""

    adapter: str = ADAPTER_DIR  # local path or Hub repo id of the LoRA adapter
    adapter_b: str | None = None  # optional second adapter for the A/B mode
    base_model: str | None = None  # None: the adapter's recorded base, else the bundled SmolLM2-135M-Instruct
    backend: str = "auto"  # auto | transformers | llama.cpp
    quant: str | None = None  # see load_twin's `quantization`
    analysis_dir: str = ANALYSIS_DIR
    prepared_dir: str = PREPARED_DIR
    feedback_dir: str | None = None  # unset: no feedback is stored anywhere
    auth: str | None = None  # "user:password" turns on Gradio's login
    max_message_chars: int = 1000
    max_context_tokens: int = 512  # older turns are trimmed from the front
    max_new_tokens: int = 256
    queue_size: int = 32
    concurrency: int = 4  # generations running at once (one streamer each)
    threads: int | None = None  # llama.cpp threads; None: every core
    n_ctx: int = 2048  # llama.cpp context, tokens
    gguf_keep: int = 4  # merged twin GGUFs kept in the cache (most recently used)
    amx_bf16_min_tokens: str | None = None  # our llama.cpp build's BF16 prefill threshold ("0" = off); None: by RAM

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AppSettings:
        """Settings from SIMME_* variables (unset or empty: the default); UserError naming a malformed variable."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f"SIMME_{f.name.upper()}"
            raw = environ.get(name, "").strip()
            if not raw:
                continue
            if f.type in ("int", "int | None"):
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise UserError(f"{name} must be a whole number, got {raw!r}") from None
            else:
                values[f.name] = raw
        return cls(**values)

    def llama_options(self) -> LlamaCppOptions:
        """The llama.cpp backend's share of the settings."""
        return LlamaCppOptions(n_threads=self.threads, n_ctx=self.n_ctx, gguf_keep=self.gguf_keep,
                               amx_bf16_min_tokens=self.amx_bf16_min_tokens)
