"""`dtype: auto` for CPU training: bf16 autocast where the CPU multiplies bf16 natively, fp32 elsewhere.

On CPUs with AMX or AVX-512-BF16, oneDNN runs bf16 matmuls on native units (the GEMM rate is ~2-3x fp32's);
elsewhere bf16 is emulated and several times slower than fp32. The choice is read from the CPU's flags, never
guessed from the vendor or model name.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

# Flags of /proc/cpuinfo (and of torch's cpu capability dict, which uses the same names) that mean native bf16 matmuls.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class Precision:
    """What `dtype: auto` resolved to: weights' dtype, autocast on or off, and why (recorded in run_config.json)."""

    dtype: str  # dtype the model's weights are loaded in
    bf16_autocast: bool
    reason: str
    flags: tuple[str, ...] = ()  # the native-bf16 flags found

    def as_dict(self) -> dict:
        return {"dtype": self.dtype, "bf16_autocast": self.bf16_autocast, "reason": self.reason,
                "native_bf16_flags": list(self.flags)}


def cpuinfo_flags(text: str) -> set[str]:
    """The flags of the first CPU listed in a /proc/cpuinfo text ('flags' on x86, 'Features' on ARM)."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def torch_cpu_flags() -> set[str]:
    """The features torch's own CPU probe reports as present (empty where this torch has no such probe)."""
    try:
        import torch

        capability = torch._C._cpu._get_cpu_capability()  # a dict of feature -> bool in torch >= 2.5
    except (ImportError, AttributeError, RuntimeError):
        return set()
    return {name for name, on in capability.items() if on is True} if isinstance(capability, dict) else set()


def machine_cpu_flags() -> set[str]:
    """This machine's CPU flags: /proc/cpuinfo where there is one, else torch's probe."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            flags = cpuinfo_flags(fh.read())
    except OSError:
        flags = set()
    return flags or torch_cpu_flags()


def native_bf16_flags(flags: set[str]) -> list[str]:
    """Which of the native-bf16 flags are in `flags` (empty: bf16 would be emulated)."""
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]


def resolve_cpu_precision(requested_dtype: str | None, flags: set[str]) -> Precision:
    """The CPU precision for a requested ModelConfig dtype, given the CPU's flags.

    'auto' keeps fp32 master weights (LoRA updates and the optimizer stay exact) and turns on bf16 autocast where
    the CPU has native bf16; any other dtype is taken as asked, without autocast.
    """
    native = tuple(native_bf16_flags(flags))
    if requested_dtype not in (None, "auto"):
        return Precision(requested_dtype, False, f"dtype {requested_dtype} as requested", native)
    if native:
        return Precision("float32", True, f"auto: native bf16 ({', '.join(native)}): fp32 weights, bf16 autocast", native)
    return Precision("float32", False, "auto: no native bf16 (no amx_bf16 / avx512_bf16 flag): fp32", native)


def apply_cpu_precision(model_args, sft_config, flags: set[str] | None = None) -> Precision:
    """Resolve `model_args.dtype` for a CPU-only run and set the trainer's autocast to match; returns the choice.

    An explicit `--bf16 true` is kept (it already passed TrainingArguments' use_cpu check); 'auto' may turn bf16
    autocast on, which TrainingArguments reads from `mixed_precision` when the trainer builds its Accelerator.
    """
    precision = resolve_cpu_precision(model_args.dtype, machine_cpu_flags() if flags is None else flags)
    model_args.dtype = precision.dtype
    if precision.bf16_autocast and not sft_config.fp16:
        sft_config.bf16 = True
        sft_config.mixed_precision = "bf16"
    if sft_config.bf16 and not precision.bf16_autocast:
        precision = Precision(precision.dtype, True, precision.reason + "; bf16 autocast as requested (--bf16 true)",
                              precision.flags)
    return precision


def _cast_frozen_linears(model, head: bool) -> list:
    """Cast the frozen fp32 weights of `model`'s plain Linear layers to bf16 in place: [(parameter, its fp32 data)].

    A weight shared with an embedding (a tied LM head) stays fp32, since the embedding's rows feed the fp32
    residual stream; with `head`, the LM head then gets its own bf16 copy (for inference: nothing trains it).
    """
    import torch

    head_module = model.get_output_embeddings() if head and hasattr(model, "get_output_embeddings") else None
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    originals = []
    for module in model.modules():
        if type(module) is not torch.nn.Linear:
            continue
        params = [p for p in (module.weight, module.bias) if p is not None]
        if any(p.requires_grad or p.dtype != torch.float32 for p in params):
            continue
        if id(module.weight) in embedded:
            if module is head_module:
                originals.append((module, module.weight))
                module.weight = torch.nn.Parameter(module.weight.detach().to(torch.bfloat16), requires_grad=False)
            continue
        for p in params:
            originals.append((p, p.data))
            p.data = p.data.to(torch.bfloat16)
    return originals


def frozen_linears_to_bf16(model) -> int:
    """Store the frozen weights of `model`'s Linear layers in bf16, for training under CPU bf16 autocast; returns
    how many parameters were cast.

    Autocast caches its bf16 copy only for weights that require grad, so every forward re-casts each frozen fp32
    weight (LoRA's base layers: most of the model) to bf16. Stored in bf16 they are the very values autocast would
    have used (both round to nearest even): the computation is unchanged. Trainable weights (LoRA, full fine-tuning)
    stay fp32, and so do weights shared with an embedding (a tied LM head).
    """
    return sum(p.numel() for p, _ in _cast_frozen_linears(model, head=False))


@contextlib.contextmanager
def cpu_bf16_inference(model, enabled: bool = True):
    """Inference under CPU bf16 autocast (nothing changes when not `enabled`): inside the block, every frozen Linear
    weight (a tied LM head too, as its own copy) is stored as autocast would cast it, so decoding does not re-cast
    the model at every token; the fp32 weights are back afterwards (merging or unmerging an adapter needs them).
    Outputs are those of autocast alone. The two go together: outside autocast, bf16 weights would meet fp32 inputs."""
    import torch

    originals = _cast_frozen_linears(model, head=True) if enabled else []
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            yield
    finally:
        for owner, data in reversed(originals):
            if isinstance(owner, torch.nn.Module):  # the LM head, tied to the embedding again
                owner.weight = data
            else:
                owner.data = data
