"""The twin as a GGUF for llama.cpp: the adapter merged into the base, written once, quantized and cached."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..models import load_model
from ..runtime import UserError, simme_cache_dir


GGUF_FTYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7, "q4_k_m": 15, "iq4_nl": 25}  # llama.cpp LLAMA_FTYPE_* values

# Without AMX: IQ4_NL, 4.5 bits per weight like Q4_0 with a non-linear codebook; llama.cpp repacks both for
# AVX2/AVX-512 and they run at the same speed, but on 6,590 tokens of real chats IQ4_NL costs +2.2 % NLL over fp32
# and Q4_0 +4.0 % (top-1 agreement 0.76 vs 0.71). With AMX (our llama.cpp build): Q8_0, +0.0 % NLL, and its AMX
# prefill is ~1.5x the repacked IQ4_NL's (2 cores, SmolLM2-135M, 2026-12-03; IQ4_NL has no AMX kernel). Q4_K_M is
# slower here: k-quants need rows divisible by 256 (576 is not) and fall back to Q5_0/Q8_0.
# `bench/bench_generate.py --quant` compares them on speed and NLL.
DEFAULT_GGUF_QUANT = "iq4_nl"

AMX_GGUF_QUANT = "q8_0"

_GGUF_EXPORT_VERSION = 1  # bump when the writer changes, so cached files are rebuilt


def gguf_export_key(base: str, adapter) -> str:
    """Cache key of a merged GGUF: the base's config + weight file sizes/mtimes and a hash of the adapter's files."""
    adapter = str(adapter) if adapter else None
    import hashlib

    h = hashlib.sha256(f"v{_GGUF_EXPORT_VERSION}|{base}".encode())
    base_dir = Path(base)
    if base_dir.is_dir():
        for f in sorted(base_dir.iterdir()):
            if f.suffix in (".json", ".safetensors", ".bin"):
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    if adapter:
        adir = Path(adapter)
        files = sorted(p for p in adir.rglob("*") if p.is_file()) if adir.is_dir() else []
        h.update(adapter.encode() if not files else b"")
        for f in files:
            if f.suffix in (".json", ".safetensors", ".bin", ".model", ".jinja"):
                data = f.read_bytes()
                if f.name == "adapter_config.json":  # peft saves target_modules from a set: order varies per process
                    cfg = json.loads(data)
                    if isinstance(cfg.get("target_modules"), list):
                        cfg["target_modules"] = sorted(cfg["target_modules"])
                    data = json.dumps(cfg, sort_keys=True).encode()
                h.update(f.name.encode() + hashlib.sha256(data).digest())
    return h.hexdigest()[:16]


def _permute_rope(w, n_head: int):
    """HF Llama q/k rows (rotate-half halves) -> llama.cpp's interleaved rope layout (what convert_hf_to_gguf does)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, tokenizer, out_path: str | Path) -> Path:
    """Write an HF Llama-architecture model (fp32 state dict, merged adapter) and its BPE vocab as an f32 GGUF.

    Only what llama.cpp needs to run it: hyperparameters, tensors in GGUF names (q/k permuted for rope) and
    the byte-level BPE vocab (tokens, types, merges). The app feeds token ids from the HF tokenizer, so the
    GGUF tokenizer is never used to split text.
    """
    import gguf

    cfg = model.config
    if cfg.model_type != "llama":
        raise NotImplementedError(f"GGUF export supports Llama-architecture models, not {cfg.model_type!r}")
    backend = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else {}
    if backend.get("model", {}).get("type") != "BPE":
        raise NotImplementedError("GGUF export supports byte-level BPE tokenizers only")
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise NotImplementedError(f"GGUF export supports default rope only, not {rope.get('rope_type')!r}")
    out_path = Path(out_path)
    writer = gguf.GGUFWriter(str(out_path), "llama")
    _add_hyperparameters(writer, cfg, rope)
    _add_vocab(writer, gguf, model, tokenizer, backend)
    _add_tensors(writer, gguf, model)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def _add_hyperparameters(writer, cfg, rope: dict) -> None:
    """The architecture's GGUF keys, from the HF config."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_name("simme-twin")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_file_type(GGUF_FTYPES["f32"])


def _add_vocab(writer, gguf, model, tokenizer, backend: dict) -> None:
    """The byte-level BPE vocab: every id of the embedding matrix (padding rows become unused tokens), merges, specials."""
    n_vocab = model.get_input_embeddings().weight.shape[0]
    vocab = {i: t for t, i in tokenizer.get_vocab().items()}
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    tokens, types = [], []
    for i in range(n_vocab):
        tokens.append(vocab.get(i, f"[PAD{i}]"))
        types.append(gguf.TokenType.UNUSED if i not in vocab else gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"].get("merges", [])]
    writer.add_vocab_size(n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, tid in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id), ("pad", tokenizer.pad_token_id),
                      ("unk", tokenizer.unk_token_id)):
        if tid is not None:
            getattr(writer, f"add_{name}_token_id")(int(tid))
    writer.add_add_bos_token(False)  # the chat template writes every special token itself


def _add_tensors(writer, gguf, model) -> None:
    """Every weight in fp32 under its GGUF name, q/k rows permuted to llama.cpp's rope layout."""
    import numpy as np

    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tied = getattr(cfg, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and tied:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise NotImplementedError(f"no GGUF name for tensor {hf_name}")
        data = tensor.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _permute_rope(data, cfg.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            data = _permute_rope(data, cfg.num_key_value_heads)
        writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))


def export_twin_gguf(base: str, adapter, tokenizer, quant: str = DEFAULT_GGUF_QUANT, keep: int = 4) -> Path:
    """The base with the LoRA merged in, as a GGUF of type `quant`, cached under simme_cache_dir()/gguf/<key>/;
    all but the `keep` most recently used exports are then removed."""
    if quant not in GGUF_FTYPES:
        raise UserError(f"llama.cpp quantization must be one of {sorted(GGUF_FTYPES)}, got {quant!r}")
    out_dir = simme_cache_dir() / "gguf" / gguf_export_key(base, adapter)
    out = out_dir / f"model-{quant}.gguf"
    if out.exists():
        out_dir.touch()  # most recently used: kept by prune_gguf_cache
        return out
    from filelock import FileLock

    out_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir / ".lock")):
        if out.exists():
            return out
        f32 = out_dir / "model-f32.gguf"
        if not f32.exists():
            print(f"Exporting the twin to GGUF under {out_dir} (once per adapter) ...", file=sys.stderr)
            model = load_model(base, tokenizer, adapter, dtype="float32", device_map={"": "cpu"}, merge=True).eval()
            write_llama_gguf(model, tokenizer, f32.with_suffix(".tmp"))
            f32.with_suffix(".tmp").rename(f32)
            del model
        if quant != "f32":
            import llama_cpp

            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = GGUF_FTYPES[quant]
            params.nthread = os.cpu_count() or 1
            tmp = out.with_suffix(".tmp")
            rc = llama_cpp.llama_model_quantize(str(f32).encode(), str(tmp).encode(), params)
            if rc != 0:
                raise RuntimeError(f"llama.cpp failed to quantize {f32} to {quant} (code {rc})")
            tmp.rename(out)
            f32.unlink()  # 4 bytes per weight: only kept when f32 itself was asked for
    removed = prune_gguf_cache(out_dir.parent, keep=keep, current=out_dir)
    if removed:
        print(f"Removed {len(removed)} older GGUF export(s) from {out_dir.parent} (SIMME_GGUF_KEEP keeps the "
              f"most recently used)", file=sys.stderr)
    return out


def prune_gguf_cache(root: Path, keep: int, current: Path) -> list[Path]:
    """Delete all but the `keep` most recently used export dirs under `root` (never `current`, nor one another
    process is writing). Each retrained adapter adds a merged twin (~140 MB for the default model), and every one
    of them holds the owner's style: old ones should not pile up."""
    import shutil

    from filelock import FileLock, Timeout

    dirs = sorted((d for d in root.iterdir() if d.is_dir() and d != current), key=lambda d: d.stat().st_mtime,
                  reverse=True)
    removed = []
    for d in dirs[max(keep - 1, 0):]:
        try:
            with FileLock(str(d / ".lock"), timeout=0):
                shutil.rmtree(d, ignore_errors=True)
        except Timeout:
            continue
        removed.append(d)
    return removed


def default_gguf_quant(amx: bool) -> str:
    """Q8_0 where the AMX kernels run (lossless and the fastest prefill there), else IQ4_NL (see GGUF_FTYPES)."""
    return AMX_GGUF_QUANT if amx else DEFAULT_GGUF_QUANT
