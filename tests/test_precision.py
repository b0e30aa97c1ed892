"""`dtype: auto` on CPU: bf16 autocast only where the flags say bf16 is native, fp32 elsewhere; the choice recorded.

Run: .venv/bin/python -m pytest -q tests/test_precision.py
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from simme_common.precision import apply_cpu_precision, cpuinfo_flags, machine_cpu_flags, resolve_cpu_precision

# First-CPU blocks of /proc/cpuinfo, trimmed: a Sapphire Rapids Xeon (AMX), a Zen 4 EPYC (AVX-512-BF16, no AMX),
# a Skylake Xeon (AVX-512 without bf16), an AVX2 laptop and an ARM server (Features: bf16 isn't an x86 flag).
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16\n"
SKYLAKE_X = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl avx512_vnni\n"
AVX2_LAPTOP = "processor\t: 0\nflags\t\t: fpu sse2 fma avx2 f16c\n\nprocessor\t: 1\nflags\t\t: fpu sse2 fma avx2 f16c avx512_bf16\n"
ARM = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 bf16\n"


@pytest.mark.parametrize(("cpuinfo", "autocast", "named"), [
    (SAPPHIRE_RAPIDS, True, "amx_bf16, avx512_bf16"),
    (ZEN4, True, "avx512_bf16"),
    (SKYLAKE_X, False, "no native bf16"),
    (AVX2_LAPTOP, False, "no native bf16"),  # only the first CPU's flags count
    (ARM, False, "no native bf16"),
    ("", False, "no native bf16"),
])
def test_auto_uses_bf16_autocast_only_with_native_bf16_flags(cpuinfo, autocast, named):
    precision = resolve_cpu_precision("auto", cpuinfo_flags(cpuinfo))
    assert precision.dtype == "float32"  # master weights stay fp32 either way
    assert precision.bf16_autocast is autocast and named in precision.reason


def test_torch_probe_names_the_same_flags_as_cpuinfo():
    """The fallback where /proc/cpuinfo is missing (torch's probe) uses the flag names the detection expects."""
    import torch

    probe = torch._C._cpu._get_cpu_capability()
    assert isinstance(probe, dict) and {"avx512_bf16", "amx_bf16"} <= probe.keys()
    assert bool(probe["avx512_bf16"] or probe["amx_bf16"]) == resolve_cpu_precision("auto", machine_cpu_flags()).bf16_autocast


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_an_explicit_dtype_is_kept_without_autocast(dtype):
    precision = resolve_cpu_precision(dtype, cpuinfo_flags(SAPPHIRE_RAPIDS))
    assert precision.dtype == dtype and not precision.bf16_autocast


def _args(dtype: str, bf16: bool = False):
    return SimpleNamespace(dtype=dtype), SimpleNamespace(bf16=bf16, fp16=False, mixed_precision="no")


def test_apply_sets_the_trainer_autocast_and_the_model_dtype():
    model_args, sft = _args("auto")
    chosen = apply_cpu_precision(model_args, sft, cpuinfo_flags(ZEN4))
    assert model_args.dtype == "float32" and sft.bf16 and sft.mixed_precision == "bf16"
    assert chosen.as_dict() == {"dtype": "float32", "bf16_autocast": True, "reason": chosen.reason,
                                "native_bf16_flags": ["avx512_bf16"]}

    model_args, sft = _args("auto")
    chosen = apply_cpu_precision(model_args, sft, cpuinfo_flags(SKYLAKE_X))
    assert model_args.dtype == "float32" and not sft.bf16 and sft.mixed_precision == "no" and not chosen.bf16_autocast

    model_args, sft = _args("float32", bf16=True)  # --bf16 true --use_cpu true asked explicitly
    assert apply_cpu_precision(model_args, sft, cpuinfo_flags(SKYLAKE_X)).bf16_autocast


def test_eager_attention_note_only_where_the_scores_would_not_fit():
    """The CPU recipes' eager attention is right for their short samples; long ones get told to use sdpa."""
    from transformers import LlamaConfig

    from simme_common.training import eager_attention_note

    smollm2 = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, num_hidden_layers=30)
    assert eager_attention_note(smollm2, batch_size=8, max_length=256) is None  # cpu_demo/cpu_full.yaml: ~0.8 GiB
    note = eager_attention_note(smollm2, batch_size=1, max_length=4096)
    assert note is not None and "~25 GiB" in note and "--attn_implementation sdpa" in note


def test_frozen_weights_stored_in_bf16_leave_autocast_training_unchanged(tiny_model_dir):
    """Under CPU bf16 autocast, LoRA's frozen base weights stored in bf16 give bit-identical loss and LoRA gradients
    (autocast would have cast them the same way); trainable and embedding-tied weights stay fp32."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from simme_common.precision import frozen_linears_to_bf16

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    input_ids = torch.randint(3, model.config.vocab_size, (2, 16))

    def loss_and_grads():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    loss_fp32, grads_fp32 = loss_and_grads()
    frozen = sum(p.numel() for n, p in model.named_parameters() if "base_layer" in n)
    assert frozen_linears_to_bf16(model) == frozen > 0
    loss_bf16, grads_bf16 = loss_and_grads()
    assert torch.equal(loss_fp32, loss_bf16)
    assert grads_fp32.keys() == grads_bf16.keys() and all(torch.equal(grads_fp32[n], grads_bf16[n]) for n in grads_fp32)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert all(dtypes[n] == torch.float32 for n in grads_fp32)  # LoRA: fp32 master weights
    assert all(d == (torch.bfloat16 if "base_layer" in n else torch.float32) for n, d in dtypes.items())
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied, still fp32
    assert frozen_linears_to_bf16(model) == 0  # nothing left to cast


def test_cpu_bf16_inference_gives_autocasts_logits_and_restores_fp32(tiny_model_dir):
    """04's passes under autocast: the same logits with every frozen weight (the tied head too) stored in bf16 for the
    block; afterwards the fp32 weights, the head's tie to the embedding and adapter merging are as before."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from simme_common.precision import cpu_bf16_inference

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    input_ids = torch.randint(3, model.config.vocab_size, (2, 12))
    model.merge_adapter()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(input_ids=input_ids).logits
        expected_greedy = model.generate(input_ids=input_ids, max_new_tokens=4, do_sample=False)
    with torch.no_grad(), cpu_bf16_inference(model):  # autocast included
        head = model.get_output_embeddings().weight
        assert head.dtype == torch.bfloat16 and model.get_input_embeddings().weight.dtype == torch.float32
        got = model(input_ids=input_ids).logits
        greedy = model.generate(input_ids=input_ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(expected, got) and torch.equal(expected_greedy, greedy)
    after = dict(model.named_parameters())
    assert all(after[n].dtype == torch.float32 and torch.equal(after[n], before[n]) for n in before)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model.unmerge_adapter()
    with cpu_bf16_inference(model, enabled=False):
        assert all(p.dtype == torch.float32 for p in model.parameters()) and not torch.is_autocast_enabled("cpu")
