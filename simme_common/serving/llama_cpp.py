"""The llama.cpp backend: weight buffers (AMX, CPU repack), the features of our patched build, loading a Llama."""

from __future__ import annotations

import ctypes
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runtime import UserError
from .gguf_export import AMX_GGUF_QUANT, default_gguf_quant, export_twin_gguf


LLAMA_CPP_AMX_FIX = "+simme.amx"  # version label of the llama-cpp-python that `make setup` builds with our AMX fix
LLAMA_CPP_FA_PREFILL = ".faprefill"  # ... and with flash attention for prompt batches (patches/*-fa-prefill.patch)
LLAMA_CPP_AMX_BF16 = ".bf16prefill"  # ... and with AMX-BF16 tiles for prompt batches (patches/*-amx-bf16-prefill.patch)
AMX_BF16_MIN_TOKENS = 32  # measured: from 32 rows the BF16 tiles win; below, reading 2x the weight bytes loses
_AMX_BF16_IN_PROCESS: list[int] = []  # the value llama.cpp read (once per process, at the first AMX model load)


@dataclass(frozen=True)
class LlamaCppOptions:
    """Settings of the llama.cpp backend (the app reads them from its environment once; see settings.AppSettings)."""

    n_threads: int | None = None  # None: every core
    n_ctx: int = 2048  # tokens of llama.cpp's context (prompt + reply)
    gguf_keep: int = 4  # merged twins kept in the GGUF cache (most recently used)
    amx_bf16_min_tokens: str | None = None  # override of amx_bf16_min_tokens ("0" = off); None: by RAM
    amx: bool = True  # False places weights as a stock llama.cpp build does (benchmarks of the AMX patch)
    # Chats decoded together in one llama.cpp batch (BatchDecoder); 1 = one request at a time (the baseline path).
    max_batch: int = 16
    # Context of each batched chat (prompt + reply; the app's defaults need 512 + 256): its KV cells are reserved up
    # front, batch_n_ctx x max_batch x ~23 KB for the default model (377 MB at 1024 x 16). n_ctx applies at 1.
    batch_n_ctx: int = 1024
    max_waiting: int = 32  # requests queued beyond max_batch before new ones are refused (TwinBusy)


def _load_llama_cpp(base: str, adapter, tokenizer, quant: str | None, options: LlamaCppOptions):
    """llama.cpp model of the merged twin (GGUF exported and cached once); ImportError when llama-cpp-python is absent.

    Call it on the thread that will run the model (ModelThread)."""
    import llama_cpp

    bufts = llama_cpp_extra_bufts()
    amx = options.amx and llama_cpp_amx_usable(bufts, llama_cpp.__version__)
    quant = quant or default_gguf_quant(amx)
    path = export_twin_gguf(base, adapter, tokenizer, quant, keep=options.gguf_keep)
    threads = options.n_threads or os.cpu_count() or 1
    weight_buffers = llama_cpp_weight_buffers(path, bufts, amx)
    bf16_min = None  # not our BF16 build, or no AMX
    if amx and LLAMA_CPP_AMX_BF16 in llama_cpp.__version__ and quant == AMX_GGUF_QUANT:
        bf16_min = _set_amx_bf16_min_tokens(path.stat().st_size, options.amx_bf16_min_tokens)
    batched = options.max_batch > 1
    kwargs = dict(model_path=str(path), n_ctx=options.batch_n_ctx * options.max_batch if batched else options.n_ctx,
                  n_threads=threads, n_threads_batch=threads, n_batch=512, last_n_tokens_size=64, verbose=False, seed=0)
    llama = _build_llama(llama_cpp, kwargs, weight_buffers, options.max_batch)
    import atexit

    atexit.register(llama.close)  # freed before interpreter teardown (Llama.__del__ fails once ctypes is gone)
    return llama, {"gguf": str(path), "quantization": quant, "n_threads": threads, "llama_cpp": llama_cpp.__version__,
                   "amx_bf16_min_tokens": bf16_min, "built_on_thread": threading.get_ident(),
                   "max_batch": options.max_batch, "n_ctx_per_chat": llama_cpp.llama_n_ctx_seq(llama._ctx.ctx),
                   "weight_buffer": ("AMX" if amx else "default") if weight_buffers is None else
                   ("CPU_REPACK" if weight_buffers[1] is not None else "CPU (no repack)")}


def _set_amx_bf16_min_tokens(gguf_bytes: int, override: str | None) -> int:
    """Decide the BF16 prompt threshold and hand it to llama.cpp, once per process.

    The one place where SimMe writes the environment: our patched llama.cpp reads SIMME_AMX_BF16_MIN_TOKENS at the
    first AMX model load of the process (patches/llama-cpp-python-*-amx-bf16-prefill.md), so later loads keep the
    first value.
    """
    if not _AMX_BF16_IN_PROCESS:
        try:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, OSError, ValueError):  # no sysconf (Windows): RAM unknown, no copy by default
            ram = 0
        _AMX_BF16_IN_PROCESS.append(amx_bf16_min_tokens(gguf_bytes, ram, override))
        os.environ["SIMME_AMX_BF16_MIN_TOKENS"] = str(_AMX_BF16_IN_PROCESS[0])
    return _AMX_BF16_IN_PROCESS[0]


def _build_llama(llama_cpp, kwargs: dict, weight_buffers: tuple[bool, Any] | None, n_seq: int = 1):
    """llama_cpp.Llama(**kwargs) with the weight buffer placement of `llama_cpp_weight_buffers` and `n_seq`
    sequences, each in its own KV cells (a stream of n_ctx / n_seq), as BatchDecoder decodes them."""
    use_extra, overrides = weight_buffers if weight_buffers is not None else (None, None)
    # Llama() takes neither buffer nor sequence options: amend the default params it starts from, for this call only.
    default_model, default_context = llama_cpp.llama_cpp.llama_model_default_params, llama_cpp.llama_cpp.llama_context_default_params

    def model_params():
        p = default_model()
        if weight_buffers is not None:
            p.use_extra_bufts = use_extra
            if overrides is not None:
                p.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p)
        return p

    def context_params():
        p = default_context()
        # One stream per sequence: each chat attends over its own cells only. A unified cache would make every
        # token attend over all chats' cells (masked): 16x the attention work at 16 chats.
        if n_seq > 1:
            p.n_seq_max, p.kv_unified = n_seq, False
        return p

    with _LLAMA_PARAMS_LOCK:
        llama_cpp.llama_cpp.llama_model_default_params = model_params
        llama_cpp.llama_cpp.llama_context_default_params = context_params
        try:
            llama = llama_cpp.Llama(**kwargs)
        finally:
            llama_cpp.llama_cpp.llama_model_default_params = default_model
            llama_cpp.llama_cpp.llama_context_default_params = default_context
    llama._simme_buft_overrides = overrides  # llama.cpp keeps pointers to the patterns: they must live as long
    return llama


def llama_prompt_logits(llama, ids: list[int]):
    """(start, logits of every position of the batch at `start`) for `ids` decoded in sequence 0 from empty cells in
    batches of n_batch, as a prompt is; each array is llama.cpp's buffer, valid until the next batch. Clears
    llama-cpp-python's prompt reuse. Call on the model thread."""
    import numpy as np

    import llama_cpp as lc

    n_ctx = lc.llama_n_ctx_seq(llama._ctx.ctx)
    if len(ids) > n_ctx:
        raise UserError(f"{len(ids)} tokens do not fit llama.cpp's context of {n_ctx} (SIMME_N_CTX)")
    llama.reset()
    llama._ctx.kv_cache_seq_rm(0, 0, -1)
    try:
        for start in range(0, len(ids), llama.n_batch):
            chunk = ids[start:start + llama.n_batch]
            llama._batch.set_batch(batch=chunk, n_past=start, logits_all=True)  # logits for every position
            llama._ctx.decode(llama._batch)
            yield start, np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(len(chunk), llama.n_vocab()))
    finally:
        llama._ctx.kv_cache_seq_rm(0, 0, -1)
        llama.reset()  # the KV cache no longer matches llama.cpp-python's record of the prompt


def nll_of_logits(ids: list[int], batches) -> float:
    """Sum of the NLL of each token of `ids` after the first, from `llama_prompt_logits`' batches."""
    import numpy as np

    total = 0.0
    for start, logits in batches:
        targets = np.array(ids[start + 1:start + len(logits) + 1])
        rows = logits[: len(targets)]
        top = rows.max(axis=1)
        lse = top + np.log(np.exp(rows - top[:, None]).sum(axis=1))
        total += float((lse - rows[np.arange(len(targets)), targets]).astype(np.float64).sum())
    return total


_LLAMA_PARAMS_LOCK = threading.Lock()

# The per-layer matmul weights (not norms, not the tied embedding that is also the LM head).
_LAYER_WEIGHTS = r"^blk\.(\d+)\.(attn_(?:q|k|v|output)|ffn_(?:gate|up|down))\.weight$"

_REPACKABLE = ("Q4_0", "IQ4_NL")  # types llama.cpp's CPU_REPACK buffer takes on x86 (Q8_0 there segfaulted)


def llama_cpp_extra_bufts() -> dict[str, int]:
    """Name -> handle of the extra weight buffer types of the loaded llama.cpp's CPU backend ("AMX", "CPU_REPACK")."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"  # the copy llama_cpp loaded (.so, .dylib or .dll)
    paths = [p for name in ("libggml.so", "libggml.dylib", "ggml.dll") for p in [lib_dir / name] if p.exists()]
    if not paths:
        return {}
    lib = ctypes.CDLL(str(paths[0]))
    for name, res, args in [("ggml_backend_dev_by_type", ctypes.c_void_p, [ctypes.c_int]),
                            ("ggml_backend_dev_backend_reg", ctypes.c_void_p, [ctypes.c_void_p]),
                            ("ggml_backend_reg_get_proc_address", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
                            ("ggml_backend_buft_name", ctypes.c_char_p, [ctypes.c_void_p])]:
        getattr(lib, name).restype, getattr(lib, name).argtypes = res, args
    dev = lib.ggml_backend_dev_by_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    addr = lib.ggml_backend_reg_get_proc_address(lib.ggml_backend_dev_backend_reg(dev), b"ggml_backend_dev_get_extra_bufts")
    bufts: dict[str, int] = {}
    if addr:
        array = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)(addr)(dev)
        i = 0
        while array and array[i]:
            bufts[lib.ggml_backend_buft_name(array[i]).decode()] = array[i]
            i += 1
    return bufts


def llama_cpp_amx_usable(bufts: Iterable[str], llama_cpp_version: str) -> bool:
    """Whether llama.cpp may put weights in its AMX buffer: the CPU has AMX and the build carries our fix.

    As released, ggml's AMX matmul loads an invalid tile config (GCC drops the stores to it) and segfaults on the
    first prefill (ggml-org/llama.cpp#20824). `make setup` builds llama-cpp-python with
    patches/llama-cpp-python-*-amx-tilecfg.patch, which also tags its version with LLAMA_CPP_AMX_FIX.
    """
    return "AMX" in bufts and LLAMA_CPP_AMX_FIX in llama_cpp_version


def amx_bf16_min_tokens(gguf_bytes: int, ram_bytes: int, override: str | None) -> int:
    """Prompt batches of at least this many tokens take the AMX-BF16 tiles of our llama.cpp build (0 = off).

    The build keeps a BF16 copy of every Q8_0 matmul weight next to it (~1.9x the GGUF's size, +255 MiB RSS for the
    default model): made by default only while that copy takes at most 1/8 of the RAM, so a 135M-1B twin gets the
    faster prefill and an 8B one is not doubled in memory. SIMME_AMX_BF16_MIN_TOKENS overrides (0 turns it off).
    """
    if override is not None and override.strip() != "":
        try:
            value = int(override)
        except ValueError:
            raise UserError(f"SIMME_AMX_BF16_MIN_TOKENS must be a whole number of tokens (0 = off), got {override!r}") from None
        return max(value, 0)
    return AMX_BF16_MIN_TOKENS if 1.9 * gguf_bytes <= ram_bytes / 8 else 0


def llama_cpp_weight_buffers(gguf_path: Path, bufts: dict[str, int], amx: bool) -> tuple[bool, Any] | None:
    """None to let llama.cpp place weights itself, or (use_extra_bufts, tensor overrides) that keep it off AMX.

    Without a usable AMX buffer (`llama_cpp_amx_usable`; its absence or a stock build on an AMX Xeon, e.g. a Space)
    there are no extra buffers, except that Q4_0/IQ4_NL layer weights are pinned to the AVX2/AVX-512 repack
    buffer, which measured 1.8x prefill and 1.4x decode over plain Q4_0 here.
    """
    if "AMX" not in bufts or amx:
        return None
    import gguf

    pattern = repack_pattern([(t.name, t.tensor_type.name, int(t.shape[-1])) for t in gguf.GGUFReader(str(gguf_path)).tensors])
    if "CPU_REPACK" not in bufts or pattern is None:
        return False, None

    class Override(ctypes.Structure):  # struct llama_model_tensor_buft_override
        _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]

    return False, (Override * 2)(Override(pattern.encode(), bufts["CPU_REPACK"]), Override(None, None))


def repack_pattern(tensors: list[tuple[str, str, int]]) -> str | None:
    """A regex (llama.cpp's std::regex, ECMAScript) matching the layer weights the CPU repack buffer can take.

    `tensors` are (GGUF name, GGML type name, rows). Mixed files keep some layers in other types (llama.cpp's
    IQ4_NL gives the first ffn_down layers Q5_K), so each weight kind lists its repackable layers; None if none.
    """
    layers: dict[str, list[int]] = {}
    for name, type_name, rows in tensors:
        m = re.match(_LAYER_WEIGHTS, name)
        if m and type_name in _REPACKABLE and rows % 8 == 0:
            layers.setdefault(m.group(2), []).append(int(m.group(1)))
    if not layers:
        return None
    parts = [f"(?:{'|'.join(map(str, sorted(ids)))})\\.{kind}" for kind, ids in sorted(layers.items())]
    return r"^blk\.(?:" + "|".join(parts) + r")\.weight$"
