"""A merged twin folder: the twin as one GGUF (LoRA merged into the base) with its tokenizer and chat template.

Written once by `app.py --export_space` / `--export_gguf`; an exported Space loads it with llama.cpp and the HF
tokenizer only, so it needs no torch, no base model and no merge at start-up.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

from ..chat_format import end_of_turn_token, ensure_training_template
from ..models import adapter_base_model, load_twin_tokenizer, resolve_adapter, resolve_base_model
from ..runtime import UserError
from .access import looks_like_hub_id
from .gguf_export import DEFAULT_GGUF_QUANT, export_twin_gguf
from .llama_cpp import LlamaCppOptions

TWIN_INFO = "twin.json"
TWIN_FORMAT = 1


def export_twin_dir(base_model: str | None, adapter, out_dir: str | Path, quant: str = DEFAULT_GGUF_QUANT,
                    keep: int = 4) -> Path:
    """Write the merged twin (GGUF of type `quant`, from the GGUF cache), its tokenizer files and TWIN_INFO to
    `out_dir`; UserError when the adapter is missing (a Space of the bare base model is no twin)."""
    ref = resolve_adapter(adapter)
    if ref is None:
        raise UserError("no adapter to export: give --adapter (or SIMME_ADAPTER) a trained adapter folder")
    base = resolve_base_model(base_model or adapter_base_model(ref))
    tokenizer = load_twin_tokenizer(base, ref)
    gguf = export_twin_gguf(base, ref, tokenizer, quant, keep=keep)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"twin-{quant}.gguf"
    shutil.copyfile(gguf, out_dir / name)
    tokenizer.save_pretrained(out_dir)
    info = {"format": TWIN_FORMAT, "gguf": name, "quantization": quant, "base": Path(base).name,
            "end_of_turn": end_of_turn_token(tokenizer)}
    (out_dir / TWIN_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def twin_dir_path(source: str) -> Path:
    """The local folder of a twin: `source` itself, or a Hub model repo downloaded once (HF_TOKEN for a private one)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if looks_like_hub_id(source):
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, repo_type="model"))
    raise UserError(f"the twin {source!r} is neither a folder nor a Hub model repo id")


def read_twin_info(folder: Path) -> dict:
    """TWIN_INFO of a twin folder; UserError naming the file when it is missing or from another export version."""
    path = folder / TWIN_INFO
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a twin folder ({type(err).__name__}); write one with app.py --export_gguf") from None
    if info.get("format") != TWIN_FORMAT or not (folder / str(info.get("gguf"))).is_file():
        raise UserError(f"{path}: field 'format' must be {TWIN_FORMAT} and 'gguf' an existing file; re-export the twin")
    return info


def load_twin_dir(source: str, options: LlamaCppOptions | None = None, cache_size: int = 64):
    """A TwinModel on llama.cpp from a twin folder (or Hub repo): its GGUF as is, its tokenizer; no torch."""
    from transformers import AutoTokenizer

    from .model_thread import ModelThread
    from .twin import TwinModel

    folder = twin_dir_path(source)
    info = read_twin_info(folder)
    tokenizer = ensure_training_template(AutoTokenizer.from_pretrained(str(folder)))
    options = options or LlamaCppOptions()
    thread = ModelThread()
    llama, llama_info = thread.call(lambda: _build(folder / info["gguf"], options))
    details = {"base": info.get("base"), "adapter": None, "device": "cpu", "twin": folder.name,
               "quantization": info.get("quantization"), **llama_info}
    return TwinModel(tokenizer, "llama.cpp", details, llama=llama, cache_size=cache_size, llama_thread=thread,
                     max_batch=options.max_batch, max_waiting=options.max_waiting)


def _build(path: Path, options: LlamaCppOptions):
    """llama.cpp's model of `path`, weights placed as the app's own loader places them (AMX only on our build)."""
    import atexit

    import llama_cpp

    from .llama_cpp import _build_llama, llama_cpp_amx_usable, llama_cpp_extra_bufts, llama_cpp_weight_buffers

    bufts = llama_cpp_extra_bufts()
    amx = options.amx and llama_cpp_amx_usable(bufts, llama_cpp.__version__)
    threads = options.n_threads or os.cpu_count() or 1
    n_ctx = options.batch_n_ctx * options.max_batch if options.max_batch > 1 else options.n_ctx  # as the loader's
    kwargs = dict(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512,
                  last_n_tokens_size=64, verbose=False, seed=0)
    llama = _build_llama(llama_cpp, kwargs, llama_cpp_weight_buffers(path, bufts, amx), options.max_batch)
    atexit.register(llama.close)  # freed before interpreter teardown (Llama.__del__ fails once ctypes is gone)
    return llama, {"gguf": path.name, "n_threads": threads, "llama_cpp": llama_cpp.__version__,
                   "built_on_thread": threading.get_ident(), "max_batch": options.max_batch}
