"""TwinModel: a loaded twin that streams replies, caches identical requests and reuses KV prefixes (transformers or
llama.cpp, whose concurrent requests are decoded in one batch)."""

from __future__ import annotations

import ctypes
import json
import threading
from typing import Any

from ..chat_format import chat_token_ids, stop_token_ids, untempered_token_ids
from ..sampling import SAMPLE_TOP_K, llama_sampler, stop_processors
from .batch_decoder import BatchDecoder, common_prefix_len, restore_seq, snapshot_seq
from .llama_cpp import llama_prompt_logits, nll_of_logits
from .model_thread import ModelThread


def reply_cache_key(messages: list[dict], settings: dict) -> str:
    """Key of the reply LRU cache: a hash of the context (role + text of each message) and the generation settings."""
    import hashlib

    payload = json.dumps([[m.get("role"), m.get("content")] for m in messages] + [sorted(settings.items())], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _release_freed_memory() -> None:
    """Hand memory freed by a closed model back to the OS (glibc keeps freed heap pages in its arenas otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class TwinModel:
    """A loaded twin (base + LoRA) behind one lock: streams replies, caches identical requests and reuses prompt prefixes.

    Every call gets its own token queue and stop event, so concurrent requests never share state; the lock
    serialises the model itself, except that a llama.cpp twin built with max_batch > 1 decodes concurrent requests
    together (BatchDecoder) and refuses them past its queue (TwinBusy). Decoding is done here with the HF tokenizer for every backend, so the
    llama.cpp and transformers paths see exactly the same prompt tokens and produce text the same way.
    """

    def __init__(self, tokenizer, backend: str, info: dict, model=None, llama=None, cache_size: int = 64,
                 prefix_cache: bool = True, prefix_slots: int = 4, llama_thread: ModelThread | None = None,
                 max_batch: int = 1, max_waiting: int = 32):
        from collections import OrderedDict

        self.tokenizer, self.backend, self.model, self.llama = tokenizer, backend, model, llama
        self._info = dict(info)
        self._lock = threading.Lock()
        self._replies: OrderedDict[str, str] = OrderedDict()
        self._replies_lock = threading.Lock()
        self.cache_size = cache_size
        self.prefix_cache = prefix_cache
        # (token ids covered, DynamicCache or llama.cpp KV snapshot), most recent last
        self._prefixes: list[tuple[tuple[int, ...], Any]] = []
        self._prefix_slots = prefix_slots
        self.stop_ids = stop_token_ids(tokenizer)
        self.untempered_ids = untempered_token_ids(tokenizer)  # end of bubble and turn: sampled at temperature 1
        self.stats = {"reply_cache_hits": 0, "prefix_tokens_reused": 0, "requests": 0}
        # Every llama.cpp call runs on one thread (the one that built it; see ModelThread), which also serializes
        # llama.cpp's state; transformers runs each request on its own thread under the lock.
        if (llama is None) != (llama_thread is None):
            raise ValueError("a llama.cpp model comes with the ModelThread that built it (llama_thread), and only then")
        self._thread = llama_thread
        self._closed = False
        # llama.cpp built with max_batch sequences: concurrent requests are decoded together (BatchDecoder)
        self._decoder = BatchDecoder(self, max_batch, max_waiting) if llama is not None and max_batch > 1 else None
        if llama is not None:
            self._thread.submit(self._warm_up)

    def _warm_up(self) -> None:
        """Page in the weights and start the thread team now, not on the first user's request."""
        with self._lock:
            self.llama.eval([self.stop_ids[0] if self.stop_ids else 0])
            self.llama.reset()

    # -- public API --------------------------------------------------------

    def close(self) -> None:
        """Free the model now (the app swaps adapter B): waits for the request running on it, then drops the weights,
        the KV snapshots and the reply cache, and on llama.cpp frees the native model and ends its thread. Later
        requests raise RuntimeError."""
        import gc

        def free():
            with self._lock:
                self._closed = True
                self._prefixes, self.model = [], None
                if self.llama is not None:
                    import atexit

                    atexit.unregister(self.llama.close)  # the registration would keep the Llama object alive
                    if self._decoder is not None:
                        self._decoder.free()
                    self.llama.close()
                    self.llama = None
        with self._replies_lock:
            self._replies.clear()
        if self._decoder is not None:  # else a steady stream of new requests would keep its loop (and this) going
            self._decoder.refuse_new()
        if self._thread is not None:
            self._thread.close(free)
        else:
            free()
        gc.collect()
        _release_freed_memory()

    def info(self) -> dict:
        """Backend, base, adapter, quantization, load seconds (and where the GGUF came from on llama.cpp)."""
        return dict(self._info, backend=self.backend)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Token ids of the chat (training template) followed by the owner's generation prompt."""
        return chat_token_ids(self.tokenizer, messages, add_generation_prompt=True)

    def count_tokens(self, messages: list[dict]) -> int:
        """Number of prompt tokens the chat takes (including the generation prompt)."""
        return len(self.prompt_ids(messages))

    def nll(self, ids: list[int]) -> tuple[float, int]:
        """Teacher-forced (sum of NLL, number of scored tokens) of `ids`: each token after the first given the ones
        before. Compares a quantized path with fp32 on the same text (bench_generate, tests); clears the KV reuse."""
        return self.call_on_model(lambda: self._nll_llama(ids) if self.llama is not None else self._nll_transformers(ids))

    def forget_prefix(self) -> None:
        """Drop every reusable KV prefix, so the next request starts cold (benchmarks)."""
        def forget():
            self._prefixes = []
            if self.llama is not None:
                self.llama.reset()
            if self._decoder is not None:
                self._decoder.forget()
        self.call_on_model(forget)

    def call_on_model(self, fn):
        """fn() under the model lock, on the llama.cpp thread when there is one; its result (or its error)."""
        def locked():
            with self._lock:
                return fn()
        return locked() if self._thread is None else self._thread.call(locked)

    def prompt_logits(self, ids: list[int]):
        """llama.cpp's logits of every position of `ids` decoded from an empty KV cache, as a prompt is (one float32
        row per token); clears the KV reuse. Compares the prefill paths of our llama.cpp build (tests)."""
        import numpy as np

        if self.llama is None:
            raise ValueError("prompt_logits needs the llama.cpp backend")
        return self.call_on_model(lambda: np.concatenate([rows.copy() for _, rows in self._llama_logits(ids)]))

    def _nll_transformers(self, ids: list[int]) -> tuple[float, int]:
        import torch

        device = next(self.model.parameters()).device
        with torch.inference_mode():
            logits = self.model(torch.tensor([ids], device=device)).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:], device=device), reduction="sum")
        return float(nll), len(ids) - 1

    def _nll_llama(self, ids: list[int]) -> tuple[float, int]:
        return nll_of_logits(ids, self._llama_logits(ids)), len(ids) - 1

    def _llama_logits(self, ids: list[int]):
        """llama_prompt_logits on sequence 0, which the batch decoder's slots then no longer hold."""
        if self._decoder is not None:
            self._decoder.forget()
        return llama_prompt_logits(self.llama, ids)

    def generate(self, messages: list[dict], **settings) -> str:
        """The whole reply (same arguments as `stream`)."""
        text = ""
        for text in self.stream(messages, **settings):
            pass
        return text

    def stream(self, messages: list[dict], *, temperature: float = 0.7, top_p: float = 0.95,
               repetition_penalty: float = 1.1, max_new_tokens: int = 128, seed: int | None = None,
               untempered_stop: bool = True, use_cache: bool = True, cache_scope: str | None = None):
        """Yield the accumulated reply text as tokens arrive; stop at the end-of-turn token or max_new_tokens.

        temperature 0 means greedy; with `untempered_stop` the end of the turn and of each bubble is sampled at
        its temperature-1 probability, so temperature changes the words, not the reply length
        (`sampling.untempered_stop_logits`).
        Identical requests (context + settings + seed + `cache_scope`) are answered from the LRU cache in one piece;
        pass another seed (or use_cache=False) for a fresh sample. The app passes its session as `cache_scope`, so
        one user's requests never hit (or time) another user's entries.
        """
        import queue

        if self._closed:
            raise RuntimeError("this model was unloaded")
        settings = {"temperature": float(temperature), "top_p": float(top_p), "repetition_penalty": float(repetition_penalty),
                    "max_new_tokens": int(max_new_tokens), "seed": seed, "untempered_stop": bool(untempered_stop)}
        key = reply_cache_key(messages, settings if cache_scope is None else dict(settings, scope=cache_scope))
        if use_cache and self.cache_size > 0:
            with self._replies_lock:
                if key in self._replies:
                    self._replies.move_to_end(key)
                    self.stats["reply_cache_hits"] += 1
                    yield self._replies[key]
                    return
        ids = self.prompt_ids(messages)
        tokens: queue.Queue = queue.Queue()
        stop = threading.Event()
        if self._decoder is not None:
            self._decoder.submit(ids, settings, tokens.put, stop)  # TwinBusy when its queue is full
        elif self._thread is not None:
            self._thread.submit(lambda: self._worker(ids, settings, tokens, stop))
        else:
            threading.Thread(target=self._worker, args=(ids, settings, tokens, stop), daemon=True).start()
        generated: list[int] = []
        text, finished = "", False
        try:
            while True:
                item = tokens.get()
                if item is None:
                    finished = True
                    break
                if isinstance(item, BaseException):
                    raise item
                generated.append(item)
                new = self.tokenizer.decode(generated, skip_special_tokens=True)
                if new != text and not new.endswith("\ufffd"):  # hold back half of a multi-byte character
                    text = new
                    yield text
            final = self.tokenizer.decode(generated, skip_special_tokens=True)
            if final != text:
                text = final
                yield text
        finally:
            stop.set()  # a closed generator (user left, Gradio cancelled) stops the model early
        if finished and use_cache and self.cache_size > 0:
            with self._replies_lock:
                self._replies[key] = text
                while len(self._replies) > self.cache_size:
                    self._replies.popitem(last=False)

    # -- backends ----------------------------------------------------------

    def _worker(self, ids: list[int], settings: dict, tokens, stop) -> None:
        """Run one generation under the model lock, putting new token ids on `tokens`, then None (or the error)."""
        if stop.is_set():  # the caller left while this request waited for the model
            tokens.put(None)
            return
        try:
            with self._lock:
                if self._closed:
                    raise RuntimeError("this model was unloaded")
                self.stats["requests"] += 1
                if self.backend == "llama.cpp":
                    self._produce_llama(ids, settings, tokens.put, stop)
                else:
                    self._produce_transformers(ids, settings, tokens.put, stop)
            tokens.put(None)
        except BaseException as err:  # surfaced to the consumer thread, which re-raises it
            tokens.put(err)

    def _best_prefix(self, ids: list[int]):
        """The stored (token ids, cache) sharing the longest prefix with `ids`, and that length (< len(ids))."""
        best, best_len = None, 0
        for covered, cache in self._prefixes:
            n = min(common_prefix_len(covered, ids), len(ids) - 1)  # at least one prompt token must be fed
            if n > best_len:
                best, best_len = (covered, cache), n
        return best, best_len

    def _take_prefix(self, ids: list[int]):
        """A private copy of the stored KV cache sharing the longest prefix with `ids` (cropped), or None."""
        import copy

        best, best_len = self._best_prefix(ids)
        if best is None or best_len < 16:  # a few shared tokens are not worth a copy of the cache
            return None, 0
        cache = copy.deepcopy(best[1])
        if cache.get_seq_length() > best_len:
            cache.crop(best_len - cache.get_seq_length())
        return cache, best_len

    def _store_prefix(self, covered: list[int], cache) -> None:
        """Remember a KV cache and the token ids it covers (small LRU of `prefix_slots`)."""
        covered_t = tuple(covered)
        self._prefixes = [(c, k) for c, k in self._prefixes if c[: len(covered_t)] != covered_t[: len(c)]]
        self._prefixes.append((covered_t, cache))
        del self._prefixes[: -self._prefix_slots]

    def _produce_transformers(self, ids: list[int], settings: dict, put, stop) -> None:
        """Generate with transformers (greedy at temperature 0), reusing a cached prompt prefix when one matches."""
        import torch
        from transformers import DynamicCache, GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        class _Put(BaseStreamer):
            """Per-call streamer: forwards new token ids (the first `put` is the prompt)."""

            def __init__(self):
                self.prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:
                    self.prompt_seen = True
                    return
                for t in value.reshape(-1).tolist():
                    if t not in stop_ids:
                        put(int(t))

            def end(self):
                pass

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        stop_ids = set(self.stop_ids)
        greedy = settings["temperature"] <= 0
        config = GenerationConfig(
            max_new_tokens=settings["max_new_tokens"], do_sample=not greedy,
            temperature=None if greedy else settings["temperature"], top_p=None if greedy else settings["top_p"],
            top_k=None if greedy else SAMPLE_TOP_K, repetition_penalty=settings["repetition_penalty"],
            eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id, return_dict_in_generate=True,
        )
        if settings["seed"] is not None:
            torch.manual_seed(int(settings["seed"]))
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        cache, reused = self._take_prefix(ids) if self.prefix_cache else (None, 0)
        self.stats["prefix_tokens_reused"] += reused
        cache = cache if cache is not None else DynamicCache(config=self.model.config)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config,
                cache=cache, streamer=_Put(), stopping_criteria=StoppingCriteriaList([_Stop()]),
                logits_processor=LogitsProcessorList(stop_processors(settings, self.untempered_ids)),
            )
        if self.prefix_cache and out.cache is not None:
            seq = out.sequences[0].tolist()
            self._store_prefix(seq[: out.cache.get_seq_length()], out.cache)

    def _produce_llama(self, ids: list[int], settings: dict, put, stop) -> None:
        """Generate with llama.cpp from the same prompt tokens, from the best stored KV prefix.

        llama.cpp itself reuses the prefix its KV cache holds (the previous request). Snapshots of that cache
        (one sequence, ~23 KB per token for SmolLM2) of the last `prefix_slots` chats let interleaved users each
        continue their own chat instead of evicting one another.
        """
        llama = self.llama
        if self.prefix_cache:
            live = min(common_prefix_len(llama._input_ids.tolist(), ids), len(ids) - 1)
            best, n = self._best_prefix(ids)
            if best is not None and n >= live + 16 and self._restore_llama(*best):
                live = n
            self.stats["prefix_tokens_reused"] += live
        chain = llama_sampler(llama, settings, self.untempered_ids, ids)
        # Llama.generate builds llama-cpp-python's own chain here, whose order differs from transformers'
        llama._init_sampler = lambda **_: chain
        stop_ids = set(self.stop_ids)
        n = 0
        try:
            for token in llama.generate(ids, reset=True):
                if token in stop_ids or stop.is_set():
                    break
                put(int(token))
                n += 1
                if n >= settings["max_new_tokens"]:
                    break
        finally:
            del llama._init_sampler
        if self.prefix_cache and llama.n_tokens >= 16:
            self._snapshot_llama()

    def _snapshot_llama(self) -> None:
        """Store the KV cache of llama.cpp's sequence 0 with the token ids it covers."""
        snapshot = snapshot_seq(self.llama._ctx.ctx, 0)
        if snapshot is not None:  # the buffer itself is kept (no copy): it is only read again by _restore_llama
            self._store_prefix(self.llama._input_ids.tolist(), snapshot)

    def _restore_llama(self, covered: tuple[int, ...], snapshot: tuple[Any, int]) -> bool:
        """Load a stored KV snapshot into sequence 0 and tell llama-cpp-python which tokens it now holds."""
        llama = self.llama
        if not restore_seq(llama._ctx.ctx, 0, snapshot):
            llama.reset()
            return False
        llama.input_ids[: len(covered)] = covered
        llama.n_tokens = len(covered)
        llama._requires_eval = True  # the logits are not those of the restored prompt
        return True
