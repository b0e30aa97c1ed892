"""The app's settings: its environment read once, at start-up, into one object that is passed down.

Library functions never read SIMME_* variables; the app (and benchmarks that serve like it) build AppSettings with
`from_env()` and hand its values to load_twin and the UI. Two documented exceptions: SIMME_CACHE locates the shared
model cache for every stage (runtime.simme_cache_dir, like HF_HOME), and the app hands SIMME_AMX_BF16_MIN_TOKENS to
our patched llama.cpp through the environment, which is the only way it reads it (serving/llama_cpp.py).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .runtime import UserError
from .serving.llama_cpp import LlamaCppOptions
from .stage_io import ADAPTER_DIR, ANALYSIS_DIR, PREPARED_DIR


@dataclass(frozen=True)
class AppSettings:
    """Every setting of the app; field `x` is the environment variable SIMME_X (`ENV_NAMES` lists exceptions)."""

    adapter: str = ADAPTER_DIR  # local path or Hub repo id of the LoRA adapter
    twin: str | None = None  # a merged twin folder (GGUF + tokenizer; app.py --export_space) or a Hub model repo of one
    adapter_b: str | None = None  # optional second adapter for the A/B mode
    base_model: str | None = None  # None: the adapter's recorded base, else the bundled SmolLM2-135M-Instruct
    backend: str = "auto"  # auto | transformers | llama.cpp
    quant: str | None = None  # see load_twin's `quantization`
    analysis_dir: str = ANALYSIS_DIR
    prepared_dir: str = PREPARED_DIR
    blind_samples: str | None = None  # JSONL of anonymized held-out samples for "Real or twin?" (an exported Space)
    feedback_dir: str | None = None  # unset: no feedback is stored anywhere
    auth: str | None = None  # "user:password" turns on Gradio's login
    server_name: str | None = None  # GRADIO_SERVER_NAME; None: 127.0.0.1, or 0.0.0.0 on a Space
    server_port: int | None = None  # GRADIO_SERVER_PORT; None: 7860
    space_id: str | None = None  # SPACE_ID, set by Hugging Face Spaces
    adapter_dirs: str = "outputs"  # adapter B loads only from directories inside these (separated by os.pathsep or ",")
    allow_hub_adapters: bool = False  # adapter B may also be a Hub repo id (and the Hub stays online)
    max_message_chars: int = 1000
    max_name_chars: int = 64  # contact, sender and each group member
    max_members: int = 20
    max_title_chars: int = 100  # group name
    max_history_messages: int = 200  # chat bubbles a request may carry (the oldest beyond are dropped)
    max_history_chars: int = 50_000  # characters of all of them together
    max_upload_bytes: int = 1_000_000  # Gradio's upload route (the app has no upload field)
    feedback_max_rows: int = 10_000  # per feedback store (ratings, preferences); further saves are refused
    feedback_max_bytes: int = 50_000_000
    max_context_tokens: int = 512  # older turns are trimmed from the front
    max_new_tokens: int = 256
    queue_size: int = 32
    concurrency: int = 16  # chats generating at once; on llama.cpp they are decoded together (max_batch)
    max_batch: int = 16  # llama.cpp chats decoded in one batch; 1 = one request at a time
    batch_n_ctx: int = 1024  # llama.cpp context per batched chat, tokens (KV reserved up front for max_batch)
    max_waiting: int = 32  # requests waiting for a batch slot before new ones are refused
    threads: int | None = None  # llama.cpp threads; None: every core
    n_ctx: int = 2048  # llama.cpp context, tokens
    gguf_keep: int = 4  # merged twin GGUFs kept in the cache (most recently used)
    amx_bf16_min_tokens: str | None = None  # our llama.cpp build's BF16 prefill threshold ("0" = off); None: by RAM

    def listen_address(self) -> tuple[str, int]:
        """(host, port) to serve on: 0.0.0.0 on a Space (its proxy forwards to port 7860, the default), else
        127.0.0.1:7860."""
        if self.space_id:
            return "0.0.0.0", self.server_port or 7860
        return self.server_name or "127.0.0.1", self.server_port or 7860

    def check_exposure(self) -> None:
        """UserError unless the app is private: on a loopback address, or behind SIMME_AUTH's login."""
        if self.auth:
            return
        if self.space_id:
            raise UserError("this is a Space (SPACE_ID is set) and the app has no login: add the secret "
                            "SIMME_AUTH=user:password in the Space settings")
        host = self.listen_address()[0]
        if not is_loopback(host):
            raise UserError(f"refusing to serve on {host} without a login: set SIMME_AUTH=user:password, or "
                            "GRADIO_SERVER_NAME=127.0.0.1 to serve this machine only")

    def adapter_roots(self) -> list[str]:
        """The real paths of SIMME_ADAPTER_DIRS (symlinks resolved), relative ones from the working directory."""
        parts = self.adapter_dirs.replace(os.pathsep, ",").split(",")
        return [os.path.realpath(os.path.expanduser(p.strip())) for p in parts if p.strip()]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, defaults: Mapping[str, str] | None = None) -> AppSettings:
        """Settings from SIMME_* variables (unset or empty: `defaults`, then the field's default); UserError naming a
        malformed variable."""
        environ = os.environ if environ is None else environ
        environ = {**(defaults or {}), **{k: v for k, v in environ.items() if v.strip()}}
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = env_name(f.name)
            raw = environ.get(name, "").strip()
            if not raw:
                continue
            if f.type == "bool":
                if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
                    raise UserError(f"{name} must be 1 or 0, got {raw!r}")
                values[f.name] = raw.lower() in ("1", "true", "yes")
            elif f.type in ("int", "int | None"):
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
                               amx_bf16_min_tokens=self.amx_bf16_min_tokens, max_batch=self.max_batch,
                               batch_n_ctx=self.batch_n_ctx, max_waiting=self.max_waiting)


SPACE_SETTINGS_FILE = "simme_space.json"  # written by app.py --export_space beside the Space's app.py


def folder_defaults(app_dir: str | Path) -> dict[str, str]:
    """The SIMME_* defaults an exported Space folder records in SPACE_SETTINGS_FILE (relative paths resolved against
    `app_dir`); {} when there is none. The Space's own variables and secrets still win."""
    path = Path(app_dir) / SPACE_SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path} is not valid JSON ({err}): re-run app.py --export_space") from None
    if not isinstance(values, dict) or not all(isinstance(k, str) and k.startswith("SIMME_") for k in values):
        raise UserError(f"{path} must map SIMME_* variable names to values: re-run app.py --export_space")
    paths = {"SIMME_TWIN", "SIMME_ANALYSIS_DIR", "SIMME_BLIND_SAMPLES", "SIMME_PREPARED_DIR"}
    return {k: str(Path(app_dir) / v) if k in paths and (Path(app_dir) / str(v)).exists() else str(v)
            for k, v in values.items()}


# Fields read from variables that are not SIMME_*: Gradio's own address variables and the one a Space sets.
ENV_NAMES = {"server_name": "GRADIO_SERVER_NAME", "server_port": "GRADIO_SERVER_PORT", "space_id": "SPACE_ID"}


def env_name(field: str) -> str:
    """The environment variable of AppSettings field `field` (SIMME_<FIELD> unless ENV_NAMES says otherwise)."""
    return ENV_NAMES.get(field, f"SIMME_{field.upper()}")


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (localhost, 127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve to any interface
        return False
