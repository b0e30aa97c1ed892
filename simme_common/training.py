"""03's checks: which tokens are trained, and GPU-only options requested on a CPU machine."""

from __future__ import annotations



def trained_segments(input_ids: list[int], labels: list[int], tokenizer) -> list[str]:
    """Decoded runs of consecutive trained tokens (label != -100): one string per owner turn when masking is right."""
    runs: list[list[int]] = []
    prev = False
    for tok, lab in zip(input_ids, labels):
        on = lab != -100
        if on and not prev:
            runs.append([])
        if on:
            runs[-1].append(tok)
        prev = on
    return [tokenizer.decode(r) for r in runs]


def device_option_problem(sft_config, model_args, has_gpu: bool) -> str | None:
    """One sentence on a GPU-only option requested on a machine without a GPU (None when the options fit)."""
    if has_gpu:
        return None
    attn = getattr(model_args, "attn_implementation", None) or ""
    if getattr(sft_config, "fp16", False):
        return "--fp16 needs a GPU; drop it (CPU training runs in fp32, see configs/cpu_demo.yaml)"
    if "flash" in attn:
        return f"--attn_implementation {attn} needs a GPU; drop it (CPU uses sdpa)"
    if getattr(sft_config, "padding_free", False) or (
        getattr(sft_config, "packing", False) and getattr(sft_config, "packing_strategy", "") in ("bfd", "bfd_split")
    ):
        return (
            "--padding_free / --packing keep samples apart only with FlashAttention on a GPU; on CPU drop them "
            "(configs/cpu_demo.yaml groups samples by length instead)"
        )
    if getattr(sft_config, "deepspeed", None):
        return "--deepspeed needs GPUs; drop it or use configs/accelerate/deepspeed_zero3.yaml on a GPU machine"
    return None
