"""Preference learning on the tiny model: DPO and KTO change only the LoRA weights of the current twin; self-play pairs
come from the training split only."""

import pytest
import torch

from simme_common import preferences
from simme_common.chat_format import OWNER_ROLE, OTHER_ROLE


def _chat(i: int, split: str) -> dict:
    return {"messages": [{"role": "system", "content": "You are Ann."},
                         {"role": OTHER_ROLE, "content": f"{split} question {i}?"},
                         {"role": OWNER_ROLE, "content": f"{split} answer {i} haha"}]}


def _twin(tiny_model_dir, tmp_path):
    """The tiny base with a trainable LoRA adapter saved and reloaded, as 03 continues a twin (--init_adapter)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter",
                                      is_trainable=True)
    return model, tokenizer


def _sft_config(tmp_path, **kw):
    from trl import SFTConfig

    return SFTConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2,
                     report_to="none", save_strategy="no", logging_steps=1, max_length=128, use_cpu=True, **kw)


def _train_and_compare(trainer):
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed, "nothing trained"
    assert all("lora_" in n and ".default." in n for n in changed), sorted(changed)[:5]


@pytest.mark.slow
def test_dpo_on_ab_picks_changes_only_the_twins_lora_weights(tiny_model_dir, tmp_path):
    from datasets import Dataset

    model, tokenizer = _twin(tiny_model_dir, tmp_path)
    rows = [{"prompt": _chat(i, "train")["messages"][:-1], "chosen": [{"role": OWNER_ROLE, "content": f"yes {i} haha"}],
             "rejected": [{"role": OWNER_ROLE, "content": "I am an AI language model."}]} for i in range(4)]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "fb" / preferences.PREFERENCE_STORE))
    data = preferences.load_preference_data(tmp_path / "fb")
    assert data["kto"] is None and len(data["dpo"]) == 4
    _train_and_compare(preferences.preference_trainer("dpo", model, tokenizer, data["dpo"], _sft_config(tmp_path)))


@pytest.mark.slow
def test_kto_on_ratings_changes_only_the_twins_lora_weights(tiny_model_dir, tmp_path):
    from datasets import Dataset

    model, tokenizer = _twin(tiny_model_dir, tmp_path)
    rows = [{"prompt": _chat(i, "train")["messages"][:-1], "completion": [{"role": OWNER_ROLE, "content": f"ok {i}"}],
             "label": i % 2 == 0} for i in range(6)]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "fb" / preferences.RATING_STORE))
    data = preferences.load_preference_data(tmp_path / "fb")
    _train_and_compare(preferences.preference_trainer("kto", model, tokenizer, data["kto"], _sft_config(tmp_path)))


def test_self_play_uses_training_contexts_only_and_skips_silence(tmp_path):
    from datasets import Dataset, DatasetDict

    splits = DatasetDict({s: Dataset.from_list([_chat(i, s) for i in range(20)]) for s in ("train", "validation", "test")})
    silent = _chat(99, "train")
    silent["messages"][-1]["content"] = preferences.SILENT_REPLY
    train = Dataset.from_list(list(splits["train"]) + [silent])
    contexts = preferences.self_play_contexts(train, n=50, seed=1)
    assert len(contexts) == 20 and all(c[0][1]["content"].startswith("train ") for c in contexts)
    pairs = preferences.self_play_pairs(contexts[:2], [contexts[0][1], "something else"])
    assert len(pairs) == 1 and pairs[0]["chosen"][0]["content"] == contexts[1][1]
    assert pairs[0]["rejected"][0]["content"] == "something else"


def test_missing_or_malformed_stores_say_which_path_and_column(tmp_path):
    from datasets import Dataset

    with pytest.raises(preferences.UserError, match="not a directory"):
        preferences.load_preference_data(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(preferences.UserError, match="no preferences/"):
        preferences.load_preference_data(tmp_path / "empty")
    Dataset.from_list([{"prompt": [], "chosen": []}]).save_to_disk(str(tmp_path / "bad" / preferences.PREFERENCE_STORE))
    with pytest.raises(preferences.UserError, match=r"preferences: missing column\(s\) rejected"):
        preferences.load_preference_data(tmp_path / "bad")


@pytest.mark.slow
def test_03_self_play_round_on_top_of_a_twin_writes_a_new_adapter(tiny_model_dir, tmp_path):
    """03 --init_adapter A --preference_data D --self_play N: pairs from training contexts, DPO, a new adapter."""
    from datasets import load_from_disk
    from safetensors.torch import load_file

    import simme_common as sc
    from simme_common.precision import machine_cpu_flags, native_bf16_flags
    from train_helpers import SMOKE, train03, write_prepared

    prepared = write_prepared(tmp_path / "prepared")
    common = ["--config", SMOKE, "--model_name_or_path", str(tiny_model_dir), "--input_dir", str(prepared)]
    train03.main(*train03.parse_args(common + ["--output_dir", str(tmp_path / "sft")]))
    trainer = train03.main(*train03.parse_args(common + [
        "--init_adapter", str(tmp_path / "sft"), "--preference_data", str(tmp_path / "fb"), "--self_play", "4",
        "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "dpo"), "--dtype", "auto"]))
    assert type(trainer).__name__ == "DPOTrainer"
    # dtype auto: under bf16 autocast the round trains with its frozen base weights stored in bf16, as SFT does
    native = bool(native_bf16_flags(machine_cpu_flags()))
    base_dtypes = {p.dtype for n, p in trainer.model.named_parameters() if "base_layer" in n}
    assert base_dtypes == {torch.bfloat16 if native else torch.float32}
    pairs = load_from_disk(str(tmp_path / "fb" / preferences.SELF_PLAY_STORE))
    train_contexts = [m["messages"][:-1] for m in sc.load_prepared_dataset(prepared)["train"]]
    assert 0 < len(pairs) <= 4 and all(p in train_contexts for p in pairs["prompt"])
    before, after = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("sft", "dpo"))
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(sc.UserError, match="pass it as --init_adapter"):
        train03.main(*train03.parse_args(common + ["--preference_data", str(tmp_path / "fb"),
                                                   "--output_dir", str(tmp_path / "x")]))
