"""Shared pytest fixtures: small real things, no downloads.

`tiny_model_dir` is a 2-layer Llama built from a config with a BPE tokenizer trained in-process on
fixture-like text, saved as a normal HF model directory with the SimMe training chat template.
Run: .venv/bin/python -m pytest -q tests
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _find_fixtures() -> Path:
    """shared/fixtures/messenger: beside this checkout (CI), inside it, or beside the local repository it was
    cloned from (`git clone . /tmp/x` for a clean-clone test); $SIMME_FIXTURES_DIR overrides all."""
    if os.environ.get("SIMME_FIXTURES_DIR"):
        return Path(os.environ["SIMME_FIXTURES_DIR"])
    roots = [ROOT.parent, ROOT]
    origin = subprocess.run(["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
                            capture_output=True, text=True).stdout.strip()
    if origin and Path(origin).is_dir():  # a local path, not a URL
        roots.append(Path(origin).resolve().parent)
    candidates = [r / "shared" / "fixtures" / "messenger" for r in roots]
    return next((c for c in candidates if c.exists()), candidates[0])


FIXTURES = _find_fixtures()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

TINY_CORPUS = [
    "hey how are you doing today", "im good thanks wbu", "lol that is so funny 😂", "ok see you tomorrow",
    "anh ơi mai đi cà phê không", "ừ được đó, mấy giờ", "haha ok em", "where are we going tonight?",
    "I don't know... maybe the usual place", "sounds good!!", "can't wait 🎉", "Write a realistic text message chat.",
    "This is a one-on-one chat between", "This is a group chat with", "You are", "Reply <silent> to stay silent.",
]


def build_tiny_model(out_dir: Path, vocab_size: int = 512, hidden: int = 32, layers: int = 2) -> Path:
    """Train a byte-level BPE tokenizer on TINY_CORPUS and save it with a random tiny Llama to `out_dir`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    import simme_common as sc

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TINY_CORPUS * 4, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>",
        pad_token="<|im_end|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    sc.ensure_training_template(hf_tok)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(hf_tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = hf_tok.eos_token_id
    model.generation_config.pad_token_id = hf_tok.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    hf_tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session", autouse=True)
def anonymizer_key_file(tmp_path_factory):
    """A throwaway $SIMME_KEY_FILE: no test creates or reads the real ~/.config/simme key."""
    path = tmp_path_factory.mktemp("simme_key") / "anonymizer.key"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIMME_KEY_FILE", str(path))
        yield path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Path of a tiny random Llama + in-process tokenizer with the training chat template."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory) -> Path:
    """A small 01-style prepared dataset (one-on-one and group samples) for 03's tests."""
    from train_helpers import write_prepared

    return write_prepared(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The shared Messenger export fixtures (../shared/fixtures/messenger)."""
    assert FIXTURES.exists(), f"fixtures not found at {FIXTURES}"
    return FIXTURES


@contextmanager
def app_server(env: dict[str, str], log: Path):
    """`python app.py` with `env` on a free 127.0.0.1 port, output to `log`: yields (process, url); stopped after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**env, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc, f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_until_serving(proc, url: str, log: Path, timeout: float = 240) -> None:
    """Return once the app answers HTTP (any status: a login page counts); fail with its log if it exits or hangs."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"app.py exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"app.py did not start:\n{log.read_text()[-3000:]}"
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)


def run_llama_child(code: str, cache: Path, args: list[str] = (), **env: str) -> dict:
    """Run `code` in a child Python with `cache` as SIMME_CACHE (llama.cpp is native code: a crash fails the test,
    not the session); the JSON of its last stdout line."""
    env = {**os.environ, "SIMME_CACHE": str(cache), "PYTHONPATH": str(ROOT), **env}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"llama.cpp child exited with {proc.returncode}: {proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])
