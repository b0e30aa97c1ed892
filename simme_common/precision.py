"""`dtype: auto` for CPU training: bf16 autocast where the CPU multiplies bf16 natively, fp32 elsewhere.

On CPUs with AMX or AVX-512-BF16, oneDNN runs bf16 matmuls on native units (the GEMM rate is ~2-3x fp32's);
elsewhere bf16 is emulated and several times slower than fp32. The choice is read from the CPU's flags, never
guessed from the vendor or model name.
"""

from __future__ import annotations

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
