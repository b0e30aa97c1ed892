"""03's checks (which tokens are trained, GPU-only options on a CPU machine), its compiled decoder layers and its
private W&B tracking."""

from __future__ import annotations

from pathlib import Path


def trained_runs(trained: list[bool]) -> list[tuple[int, int]]:
    """(start, end) of each run of consecutive True flags, in order."""
    runs: list[tuple[int, int]] = []
    for k, on in enumerate(trained):
        if on:
            start = runs.pop()[0] if runs and runs[-1][1] == k else k
            runs.append((start, k + 1))
    return runs


def trained_segments(input_ids: list[int], labels: list[int], tokenizer) -> list[str]:
    """Decoded runs of consecutive trained tokens (label != -100): one string per owner turn when masking is right."""
    return [tokenizer.decode(input_ids[s:e]) for s, e in trained_runs([lab != -100 for lab in labels])]


def compile_decoder_layers(causal_lm) -> tuple[bool, str]:
    """torch.compile each decoder layer of `causal_lm` in place (regional compilation: the layers share one compiled
    block, with sequence lengths dynamic, so the first step compiles once for every length): (whether it did, what
    was done or why not). On CPU, Inductor writes and builds C++: without a compiler the layers stay uncompiled."""
    layers = getattr(getattr(causal_lm, "model", None), "layers", None)
    if layers is None:
        return False, f"not compiled: {type(causal_lm).__name__} has no model.layers"
    if causal_lm.device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()
        except (RuntimeError, OSError) as err:  # InvalidCxxCompiler is a RuntimeError
            return False, f"not compiled: torch.compile on CPU needs a C++ compiler ({type(err).__name__}); install g++ or clang++"
    for layer in layers:
        layer.compile(dynamic=True)
    return True, f"{len(layers)} decoder layers compiled"


def device_option_problem(sft_config, model_args, has_gpu: bool) -> str | None:
    """One sentence on a GPU-only option requested on a machine without a GPU (None when the options fit)."""
    if has_gpu:
        return None
    attn = getattr(model_args, "attn_implementation", None) or ""
    if getattr(sft_config, "fp16", False):
        return "--fp16 needs a GPU; drop it (CPU training runs in fp32, see configs/cpu_demo.yaml)"
    if "flash" in attn:
        return f"--attn_implementation {attn} needs a GPU; drop it (on CPU use eager or sdpa)"
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


def loraplus_optimizer(model, args, ratio: float):
    """The trainer's own optimizer (class and settings from `args`) with LoRA+ parameter groups: each LoRA B
    matrix learns at `ratio` x the learning rate of its A matrix (Hayou et al. 2024, peft's LoRA+ helper).

    B starts at zero and carries the update's output directions; a higher rate there fits more per step, which a
    recipe limited to minutes needs.
    """
    from peft.optimizers import create_loraplus_optimizer
    from transformers import Trainer

    if not ratio >= 1:  # NaN too
        raise ValueError(f"--loraplus_lr_ratio must be at least 1, got {ratio}")
    if not any("lora_B" in name for name, p in model.named_parameters() if p.requires_grad):
        raise ValueError("--loraplus_lr_ratio needs trainable LoRA weights: --use_peft true")
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    kwargs.pop("lr", None)
    return create_loraplus_optimizer(model, optimizer_cls, lr=args.learning_rate, loraplus_lr_ratio=ratio,
                                     loraplus_weight_decay=args.weight_decay, **kwargs)


# Keys whose values are local paths or name the user (hub ids, run names default to the output path): W&B gets
# a placeholder instead, since folder names often carry a person's name (janedoe_10153).
_PRIVATE_KEYS = ("output_dir", "logging_dir", "input_dir", "init_adapter", "run_name", "hub_model_id",
                 "resume_from_checkpoint", "deepspeed", "_name_or_path", "base_model_name_or_path", "model_name_or_path",
                 "push_to_hub_model_id", "push_to_hub_organization", "hub_token", "trackio_space_id")
REDACTED = "<redacted>"


def _looks_like_path(value: str) -> bool:
    if value.startswith(("/", "~", "./", "../", "\\")) or value[1:3] in (":\\", ":/"):
        return True
    try:
        return Path(value).exists()
    except (OSError, ValueError):  # too long, or a NUL byte: not a path
        return False


def redact_private(config):
    """A copy of a (nested) config with the values of path and identity keys, and any local path, replaced."""
    if isinstance(config, dict):
        return {k: REDACTED if k in _PRIVATE_KEYS and config[k] not in (None, "", []) else redact_private(config[k])
                for k in config}
    if isinstance(config, (list, tuple)):
        return [redact_private(v) for v in config]
    if isinstance(config, str) and _looks_like_path(config):
        return REDACTED
    return config


def wandb_run_dir(output_dir: str, env_dir: str | None, cache_dir) -> Path:
    """Where W&B writes its files: $WANDB_DIR unless it lies inside the adapter folder, else the user cache.

    Never under output_dir, so --push_to_hub, which uploads that folder, never uploads wandb/.
    """
    out = Path(output_dir).resolve()
    if env_dir:
        chosen = Path(env_dir).expanduser().resolve()
        if chosen != out and out not in chosen.parents:
            return chosen
    return Path(cache_dir) / "wandb"


def private_wandb_callback(run_dir, extra_config: dict | None = None):
    """A transformers WandbCallback that starts the run itself: files in `run_dir`, a config without paths or
    names (`redact_private`), no run name taken from the output folder, no copy of the console."""
    from transformers.integrations import WandbCallback

    class PrivateWandbCallback(WandbCallback):
        def setup(self, args, state, model, **kwargs):
            if self._wandb is None:
                return
            self._initialized = True
            if not state.is_world_process_zero:
                return
            config = {**(model.config.to_dict() if getattr(model, "config", None) is not None else {}), **args.to_dict()}
            if getattr(model, "peft_config", None):
                config["peft_config"] = {k: v.to_dict() for k, v in model.peft_config.items()}
            config.update(extra_config or {})
            run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self._wandb.run is None:
                # console off: the terminal shows paths (the summary's output folder) that W&B must not keep
                self._wandb.init(dir=str(run_dir), config=redact_private(config),
                                 settings=self._wandb.Settings(console="off"))
            if getattr(self._wandb, "define_metric", None):
                self._wandb.define_metric("train/global_step")
                self._wandb.define_metric("*", step_metric="train/global_step", step_sync=True)

    return PrivateWandbCallback()


# Bytes kept per attention score for the backward under eager attention: the fp32 softmax output and its bf16 copy.
EAGER_SCORE_BYTES = 6
EAGER_NOTE_BYTES = 4 * 2**30


def eager_attention_note(model_config, batch_size: int, max_length: int) -> str | None:
    """A note when eager attention's saved [batch, heads, T, T] scores would take more than ~4 GiB (None otherwise).

    The CPU recipes use eager attention for their <= 256-token samples; the same YAML with long samples would
    keep scores growing with T^2 in every layer until the machine runs out of memory.
    """
    config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    heads, layers = getattr(config, "num_attention_heads", 0) or 0, getattr(config, "num_hidden_layers", 0) or 0
    estimate = batch_size * heads * max_length**2 * layers * EAGER_SCORE_BYTES
    if estimate <= EAGER_NOTE_BYTES:
        return None
    return (f"eager attention keeps ~{estimate / 2**30:.0f} GiB of attention scores at batch {batch_size} x "
            f"max_length {max_length}; for samples this long pass --attn_implementation sdpa")
