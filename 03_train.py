"""Stage 3: LoRA fine-tuning (TRL SFT) on the owner's turns of 01's dataset -> adapter directory.

accelerate launch 03_train.py --config configs/cpu_demo.yaml [--input_dir data/01_prepared] [--output_dir outputs/03_adapter]
accelerate launch --config_file configs/accelerate/multi_gpu.yaml 03_train.py --config configs/llama31_8b_8bit.yaml
accelerate launch --num_processes 2 --cpu 03_train.py --config configs/smoke.yaml     # DDP over gloo
python 03_train.py --config configs/cpu_demo.yaml --init_adapter outputs/03_adapter    # continue a previous twin

Any SFTConfig / ModelConfig flag works on the command line or as a YAML key (`--learning_rate 1e-3`, `--lora_r 8`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import simme_common as sc
from simme_common.bf16_step import lean_bf16_step
from simme_common.precision import Precision, apply_cpu_precision, frozen_linears_to_bf16
from simme_common.reply_ranking import add_reply_ranking, reply_ranking_problem
from simme_common.supervised_loss import compact_lm_head
from simme_common.training import compile_decoder_layers, private_wandb_callback, wandb_run_dir


@dataclass
class TrainArguments:
    """What TRL's SFTConfig and ModelConfig lack."""

    input_dir: str = field(default=sc.PREPARED_DIR, metadata={"help": "01_prepare's output directory (holds dataset/)."})
    init_adapter: str | None = field(
        default=None, metadata={"help": "Adapter directory to continue training (incremental retraining on a new export)."}
    )
    preference_data: str | None = field(default=None, metadata={
        "help": "Learn from preferences on top of --init_adapter: a feedback directory (the app's SIMME_FEEDBACK_DIR: "
                "preferences/ -> DPO, ratings/ -> KTO) and/or self_play/ pairs (docs/continuous.md)."})
    preference_loss: str = field(default="auto", metadata={"help": "auto (DPO when there are pairs, else KTO), dpo or kto."})
    preference_beta: float = field(default=0.1, metadata={"help": "DPO/KTO beta: how far the twin may move from its reference (the adapter it starts from)."})
    self_play: int = field(default=0, metadata={
        "help": "First build this many self-play pairs into --preference_data: the real reply chosen over the twin's "
                "own sample, on training contexts only (SPIN-style)."})
    merge: bool = field(default=False, metadata={"help": "Also save base + adapter merged into plain weights in OUTPUT_DIR/merged."})
    num_threads: int | None = field(
        default=None,
        metadata={"help": "torch threads per process on CPU; default: CPU cores / processes (accelerate launch sets 1)."},
    )
    lora_top_layers: int | None = field(default=None, metadata={
        "help": "LoRA on the top N decoder layers only: backpropagation then stops below them, so a step costs "
                "less (forward + backward through N layers instead of all). Default: every layer."})
    loraplus_lr_ratio: float | None = field(default=None, metadata={
        "help": "LoRA+: the LoRA B matrices learn at this multiple of --learning_rate (the A matrices at it). "
                "Default: one rate for all."})
    max_train_minutes: float | None = field(default=None, metadata={
        "help": "Wall-clock budget of the training steps: where max_steps would take longer, the LR schedule is fit "
                "to the steps that fit (measured after a few steps and re-planned at 25/50/75 percent of the plan, "
                "never past max_steps), so a slower machine trains fewer steps, not a cut-off schedule. "
                "Default: no budget."})
    compile_layers: str = field(default="false", metadata={
        "help": "torch.compile each decoder layer in SFT runs (one compiled block shared by all): true, false, or "
                "auto (where the CPU trains in bf16). On 2 CPU cores cpu_demo's bf16 steps ran 1.33x faster after ~1 "
                "min of compiling in the first step (~13 s once Inductor's cache holds it), paying from ~130 steps "
                "on; fp32 steps 1.12x, from ~80 steps on: more than a 10-minute budget fits on a CPU without native "
                "bf16. On CPU it needs a C++ compiler (g++ / clang++); without one the layers train uncompiled, with "
                "a note."})
    reply_ranking_weight: float = field(default=0.0, metadata={
        "help": "Weight of a context-fit term beside the LM loss: each sample's real last owner reply must score "
                "higher after its context than another sample's reply does (in-batch distractor, 04's Hits@1 "
                "score). ~2x the cost of a step. Default 0: LM loss only."})
    allocator: str = sc.allocator_field()


def parse_args(argv: list[str] | None = None):
    """(TrainArguments, SFTConfig, ModelConfig) from --config YAML and the command line, with SimMe's defaults."""
    from transformers.utils import is_torch_bf16_gpu_available
    from trl import ModelConfig, SFTConfig, TrlParser

    parser = TrlParser((TrainArguments, SFTConfig, ModelConfig))
    parser.set_defaults(
        output_dir=sc.ADAPTER_DIR,
        use_peft=True,
        assistant_only_loss=True,  # loss on the owner's words (and their end-of-turn token) only
        # TRL's bf16 default refuses to start on CPU-only machines; there `dtype: auto` turns bf16 autocast on where
        # the CPU has native bf16 (simme_common/precision.py)
        bf16=is_torch_bf16_gpu_available(),
        hub_private_repo=True,  # a twin of a real person is private unless asked otherwise
        report_to="none",  # tracking only when asked for (--report_to wandb), never because a variable is set
    )
    try:
        return parser.parse_args_and_config(args=argv)
    except ValueError as err:  # TrainingArguments' own validation, e.g. bf16 on a CPU-only machine
        raise sc.UserError(str(err).splitlines()[0]) from None


def _load_model(model_path: str, tokenizer, model_args, sft_config, init_adapter):
    """Base model in the requested dtype, quantized (bitsandbytes, k-bit prepared) when asked, with the previous
    adapter on top (trainable) when continuing one."""
    import torch
    from accelerate import PartialState
    from trl import get_quantization_config

    quantization = get_quantization_config(model_args)
    device_map = {"": PartialState().local_process_index} if quantization is not None and torch.cuda.is_available() else None
    return sc.load_model(
        model_path, tokenizer, init_adapter, dtype=model_args.dtype, device_map=device_map,
        quantization_config=quantization, trainable=True, gradient_checkpointing=sft_config.activation_checkpointing,
        revision=model_args.model_revision, trust_remote_code=sft_config.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
    )


def _below_top_layers(n: int, n_layers: int) -> str:
    """A peft `exclude_modules` pattern for the modules of all but the top `n` of `n_layers` decoder layers
    (--lora_top_layers): the first numbered segment of a module's name is its layer ("model.layers.3.mlp.up_proj"),
    a later one is not (an expert's). Excluding works for "all-linear" too, where peft ignores layers_to_transform."""
    if not 1 <= n <= n_layers:
        raise sc.UserError(f"--lora_top_layers must be between 1 and the model's {n_layers} layers, got {n}")
    below = "|".join(str(i) for i in range(n_layers - n)) or "(?!)"
    return rf"(?:(?!\d+\.)[^.]+\.)+(?:{below})\..*"


def build_trainer(train_args: TrainArguments, sft_config, model_args):
    """(SFTTrainer ready to train, info dict): data checks, threads, base model (+ k-bit), LoRA or --init_adapter."""
    import torch
    from accelerate import PartialState
    from trl import SFTTrainer, get_peft_config

    state = PartialState()
    has_gpu = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    problem = sc.device_option_problem(sft_config, model_args, has_gpu) or reply_ranking_problem(
        train_args.reply_ranking_weight, sft_config.per_device_train_batch_size, bool(train_args.preference_data))
    if problem:
        raise sc.UserError(problem)
    if train_args.preference_data and train_args.loraplus_lr_ratio is not None:
        raise sc.UserError("--loraplus_lr_ratio sets the SFT optimizer; --preference_data trains with TRL's DPO/KTO "
                           "optimizer, drop one of them")
    if sft_config.hub_token:
        raise sc.UserError("--hub_token would be saved in logs and shell history; set HF_TOKEN in the environment instead")
    if has_gpu:
        precision = Precision(model_args.dtype or "auto", bool(sft_config.bf16), "GPU: dtype and bf16 as configured")
    else:
        torch.set_num_threads(sc.cpu_threads(state.num_processes, train_args.num_threads))
        precision = apply_cpu_precision(model_args, sft_config)  # dtype auto: bf16 autocast where the CPU has it
        if model_args.load_in_8bit or model_args.load_in_4bit:
            print("note: bitsandbytes on CPU is slower than plain fp32 or bf16 autocast", file=sys.stderr)
    # Under CPU bf16 autocast the frozen weights are stored as autocast casts them (it would re-cast them on every
    # forward), each activation is cast once (bf16_step) and `--compile_layers auto` compiles
    cpu_bf16 = precision.bf16_autocast and not has_gpu
    compiles = _compiles(train_args.compile_layers, cpu_bf16)  # checked here: preference runs are never compiled

    # --- data: 01's conversational samples; only the messages column is needed ------------------------------
    data = sc.load_prepared_dataset(train_args.input_dir)
    train = data["train"].select_columns([sc.MESSAGES])
    n_owner_turns = sc.check_owner_turns(train)
    use_eval = sft_config.eval_strategy != "no" and "validation" in data and len(data["validation"]) > 0
    evaluation = data["validation"].select_columns([sc.MESSAGES]) if use_eval else None
    if not use_eval:
        sft_config.eval_strategy = "no"

    # --- model: base (+ k-bit) + LoRA, or a previous adapter to continue -------------------------------------
    model_path = sc.resolve_base_model(model_args.model_name_or_path)
    tokenizer = sc.load_tokenizer(model_path)
    init_adapter = sc.resolve_adapter(train_args.init_adapter)
    if init_adapter is not None and not init_adapter.local:
        raise sc.UserError(f"--init_adapter {init_adapter} is not a local directory; pass a 03_train.py output directory")
    base_config = _base_config(model_path, sft_config)
    base_rows = base_config.vocab_size  # input embedding rows before the tokenizer's added tokens
    excluded = None
    if train_args.lora_top_layers is not None and init_adapter is None:  # a loaded adapter keeps its own layers
        if not model_args.use_peft:
            raise sc.UserError("--lora_top_layers chooses LoRA's layers: it needs --use_peft true")
        excluded = _below_top_layers(train_args.lora_top_layers, base_config.get_text_config().num_hidden_layers)
    model = _load_model(model_path, tokenizer, model_args, sft_config, init_adapter)
    if train_args.preference_data:
        if init_adapter is None:
            raise sc.UserError("--preference_data trains on top of a twin: pass it as --init_adapter")
        trainer, info = sc.build_preference_run(train_args.preference_data, train_args.preference_loss,
                                                train_args.preference_beta, train_args.self_play, model, tokenizer,
                                                data["train"], sft_config)
        frozen_bf16 = frozen_linears_to_bf16(trainer.model) if cpu_bf16 else 0
        return trainer, {"train samples": len(train), "base model": model_path, "precision": precision.as_dict(),
                         "frozen weights in bf16": frozen_bf16,
                         "lean bf16 step": _lean_step(_causal_lm(trainer), cpu_bf16), **info}
    peft_config = get_peft_config(model_args) if init_adapter is None else None
    if peft_config is not None and excluded is not None:
        peft_config.exclude_modules = excluded
    if peft_config is not None and len(tokenizer) > base_rows:
        # The training template added ChatML markers to this vocabulary: their new rows are trained too.
        peft_config.trainable_token_indices = list(range(base_rows, len(tokenizer)))
    trainer = SFTTrainer(
        model=model,
        args=sft_config,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if train_args.loraplus_lr_ratio is not None:
        try:
            trainer.optimizer = sc.loraplus_optimizer(trainer.model, sft_config, train_args.loraplus_lr_ratio)
        except ValueError as err:
            raise sc.UserError(str(err)) from None
    frozen_bf16 = frozen_linears_to_bf16(trainer.model) if cpu_bf16 else 0
    # TRL's fused LM head scores every position on CPUs; only the owner's (labelled) positions are trained
    causal_lm = _causal_lm(trainer)
    lm_head_note = compact_lm_head(causal_lm)
    if lm_head_note and state.is_main_process:
        print(f"note: {lm_head_note}", file=sys.stderr)
    if train_args.reply_ranking_weight:
        add_reply_ranking(trainer, causal_lm, train_args.reply_ranking_weight, lm_head_note)
    # without a max_length (no truncation) the estimate assumes TRL's default of 1,024 tokens
    attention_note = None if model_args.attn_implementation != "eager" else sc.eager_attention_note(
        causal_lm.config, sft_config.per_device_train_batch_size, sft_config.max_length or 1024)
    if attention_note and state.is_main_process:
        print(f"note: {attention_note}", file=sys.stderr)
    lean_step = _lean_step(causal_lm, cpu_bf16)  # before compiling: the compiled layers trace the lean forwards
    compiled, compile_text = compile_decoder_layers(causal_lm) if compiles else (False, None)
    if compile_text and not compiled and state.is_main_process:
        print(f"note: {compile_text}", file=sys.stderr)
    if "wandb" in (sft_config.report_to or []):
        from transformers.integrations import WandbCallback

        trainer.remove_callback(WandbCallback)
        run_dir = wandb_run_dir(sft_config.output_dir, os.environ.get("WANDB_DIR"), sc.simme_cache_dir())
        trainer.add_callback(private_wandb_callback(run_dir, {"precision": precision.as_dict()}))
    info = {"train samples": len(train), "owner turns": n_owner_turns, "base model": model_path,
            "precision": precision.as_dict(), "supervised-only LM head": lm_head_note is None,
            "frozen weights in bf16": frozen_bf16, "lean bf16 step": lean_step, "compiled layers": compile_text}
    if train_args.reply_ranking_weight:
        info["reply ranking weight"] = train_args.reply_ranking_weight
    return trainer, info


def _compiles(choice, cpu_bf16: bool) -> bool:
    """--compile_layers true / false / auto (compile where the CPU trains in bf16); YAML may give a bool."""
    choice = str(choice).lower()
    if choice not in ("true", "false", "auto"):
        raise sc.UserError(f"--compile_layers is true, false or auto, got {choice!r}")
    return choice == "true" or (choice == "auto" and cpu_bf16)


def _causal_lm(trainer):
    """The transformers model inside the trainer's (PEFT's base model when wrapped)."""
    return trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model


def _lean_step(causal_lm, cpu_bf16: bool) -> str | None:
    """Under CPU bf16 autocast, each activation is cast once (simme_common/bf16_step.py); what changed, or None."""
    return (lean_bf16_step(causal_lm).summary() or None) if cpu_bf16 else None


def main(train_args: TrainArguments, sft_config, model_args):
    """Train the adapter and save it; returns the trainer (tests inspect its model and dataset)."""
    import transformers
    from accelerate import PartialState

    if train_args.max_train_minutes is not None and not train_args.max_train_minutes > 0:  # NaN too
        raise sc.UserError(f"--max_train_minutes must be above 0, got {train_args.max_train_minutes}")
    transformers.set_seed(sft_config.seed)
    state = PartialState()
    if state.is_main_process:
        print(f"Script parameters {train_args}\nModel parameters {model_args}", file=sys.stderr)

    # --- data + model + trainer -----------------------------------------------------------------------------
    trainer, info = build_trainer(train_args, sft_config, model_args)
    info["allocator"] = sc.allocator_in_use()  # SFT and preference runs alike
    if state.is_main_process and hasattr(trainer.model, "print_trainable_parameters"):
        trainer.model.print_trainable_parameters()
    budget = None
    if train_args.max_train_minutes is not None:
        budget = sc.time_budget_callback(train_args.max_train_minutes)
        trainer.add_callback(budget)

    # --- train ----------------------------------------------------------------------------------------------
    resume = sft_config.resume_from_checkpoint
    resume = True if str(resume).lower() in ("true", "last") else resume
    start = time.time()
    result = trainer.train(resume_from_checkpoint=resume)

    # --- save: adapter + tokenizer (chat template) + run config + log history; merged weights on request -----
    # Into a staging directory beside the output that then replaces it in one step (a crash leaves the previous
    # adapter whole); the trainer's checkpoints and logs in the output directory are carried over.
    out = Path(sft_config.output_dir)
    staging = out.with_name(f".{out.name}.staging")  # one name for every process
    if state.is_main_process:
        sc.carry_entries(staging, out, _CARRIED)  # a previous save killed after its exchange
        shutil.rmtree(staging, ignore_errors=True)
    state.wait_for_everyone()
    trainer.save_model(str(staging))
    if state.is_main_process:
        # dtype: auto's choice is recorded beside the arguments it resolved
        sc.save_run_config(staging, train_args, sft_config, model_args,
                           {"precision": info["precision"], "allocator": info["allocator"],
                            "time_budget": budget.info if budget else None})
        (staging / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1) + "\n")
        if train_args.merge:
            _save_merged(info["base model"], staging, model_args)
        sc.replace_dir(staging, out, keep=_CARRIED)
    if sft_config.push_to_hub:
        trainer.push_to_hub()
    state.wait_for_everyone()

    # --- summary --------------------------------------------------------------------------------------------
    if state.is_main_process:
        runtime = result.metrics.get("train_runtime", time.time() - start)
        tokens = next((h["num_tokens"] for h in reversed(trainer.state.log_history) if "num_tokens" in h), 0)
        rows = [
            *((k, v["reason"] if k == "precision" else v) for k, v in info.items()),
            ("steps", trainer.state.global_step if not (budget and budget.info["fitted"]) else
             f"{trainer.state.global_step} (max_steps {budget.info['planned_steps']} fit to max_train_minutes)"),
            ("train loss", round(result.training_loss, 4)),
            ("tokens/s (all processes)", round(tokens / runtime, 1) if runtime else 0.0),
            ("elapsed s", round(runtime, 1)),
            ("output", str(out)),
        ]
        print(sc.print_table(rows, "03_train summary"))
    if hasattr(trainer, "end"):
        trainer.end()  # finishes W&B and other trackers
    return trainer


# What the trainer writes into output_dir during training: kept across the final replace.
_CARRIED = ("checkpoint-*", "runs")


def _base_config(model_path: str, sft_config):
    """The base model's config, read before its weights load."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_path, trust_remote_code=sft_config.trust_remote_code)


def _save_merged(model_path: str, out: Path, model_args) -> None:
    """Base weights (unquantized) + the saved adapter merged into OUT/merged, with the tokenizer."""
    tokenizer = sc.load_tokenizer(model_path)
    dtype = "bfloat16" if model_args.dtype == "bfloat16" else "float32"
    merged = sc.load_model(model_path, tokenizer, str(out), dtype=dtype, merge=True)
    merged.save_pretrained(out / "merged")
    tokenizer.save_pretrained(out / "merged")


if __name__ == "__main__":
    def cli():
        # first of all, before torch and TRL load: the process may start over on mimalloc
        sc.reexec_with_allocator(sc.allocator_choice(sys.argv[1:]))
        main(*parse_args())

    sc.run_main(cli)
