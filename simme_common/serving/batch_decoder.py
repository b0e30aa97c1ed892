"""BatchDecoder: concurrent chats decoded together in one llama.cpp batch (continuous batching), each in its own
sequence with its own KV cells, sampler and stream of tokens."""

from __future__ import annotations

import ctypes
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ..sampling import llama_sampler
from ..runtime import UserError




# Gaps of at most this many idle slots between active ones are padded in a decode step (BatchDecoder._gap_pads).
PAD_GAP = 2


class TwinBusy(UserError):
    """The twin's queue is full: the request is refused at once rather than left waiting (safe to show a client)."""


def common_prefix_len(a, b) -> int:
    """Length of the longest common prefix of two token id sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def snapshot_seq(ctx, seq_id: int):
    """A copy of the KV cells of llama.cpp sequence `seq_id` ((buffer, size)), or None when it is empty."""
    import llama_cpp

    size = llama_cpp.llama_state_seq_get_size(ctx, seq_id)
    buf = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(ctx, buf, size, seq_id)
    return (buf, written) if written else None


def restore_seq(ctx, seq_id: int, snapshot: tuple[Any, int]) -> bool:
    """Load a `snapshot_seq` copy into sequence `seq_id` (emptied first); False, and the sequence empty, if it fails."""
    import llama_cpp

    mem = llama_cpp.llama_get_memory(ctx)
    buf, size = snapshot
    llama_cpp.llama_memory_seq_rm(mem, seq_id, 0, -1)
    if llama_cpp.llama_state_seq_set_data(ctx, buf, size, seq_id) != size:
        llama_cpp.llama_memory_seq_rm(mem, seq_id, 0, -1)
        return False
    return True


@dataclass
class _Request:
    ids: list[int]
    settings: dict
    put: Callable[[Any], None]  # token ids, then None at the end (or the error)
    stop: threading.Event


@dataclass
class _Slot:
    """One llama.cpp sequence: the tokens its KV cells hold (kept after a reply, for the same chat's next turn)."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    used_at: int = 0  # admission counter of its last use (least recently used slots are taken first)
    request: _Request | None = None  # the reply being decoded in it, None when free
    sampler: Any = None
    next_token: int = -1  # sampled, not yet in the KV cells
    n_new: int = 0


class BatchDecoder:
    """Decodes up to `max_batch` replies together: each step is one `llama_decode` of one token per active chat.

    Decode of a small model on 2 cores is bound by reading the weights, which one batched step reads once for every
    chat. Requests wait in a queue of `max_waiting` (beyond that TwinBusy refuses them) and join between steps:
    their prompt is prefilled alone (the same batches as the one-at-a-time path, so greedy replies are identical),
    their first token sampled at once. Each slot keeps its chat's KV cells after the reply; a new prompt takes the free
    slot sharing its longest prefix, or a stored snapshot (the twin's prefix cache), else the least recently used.
    Every llama.cpp call runs on the twin's ModelThread: the loop is one job there while any request is in flight.
    """

    def __init__(self, twin, max_batch: int, max_waiting: int):
        import llama_cpp

        self.twin, self.llama = twin, twin.llama
        self.ctx = self.llama._ctx.ctx
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.n_ctx_seq = int(llama_cpp.llama_n_ctx_seq(self.ctx))
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.slots = [_Slot(i) for i in range(max_batch)]
        self._batch_size = max(self.llama.n_batch, max_batch)
        self._batch = llama_cpp.llama_batch_init(self._batch_size, 0, 1)
        self._pending: deque[_Request] = deque()
        self._lock = threading.Lock()
        self._running = self._closed = False
        self._n_active = 0
        self._clock = 0
        self.padded_rows = 0  # throwaway tokens decoded to keep a step in one ubatch (_gap_pads)

    # -- any thread --------------------------------------------------------

    def submit(self, ids: list[int], settings: dict, put, stop: threading.Event) -> None:
        """Queue a reply (tokens go to `put`); TwinBusy when max_batch replies run and max_waiting more wait."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this model was unloaded")
            if self._n_active + len(self._pending) >= self.max_batch + self.max_waiting:
                raise TwinBusy(f"The twin is busy ({self.max_batch} chats are being answered and {self.max_waiting} "
                               "more are waiting); please try again in a moment.")
            self._pending.append(_Request(ids, settings, put, stop))
            if not self._running:
                self._running = True
                self.twin._thread.submit(self._run)

    def active(self) -> int:
        """Replies being decoded now (not counting those waiting)."""
        return self._n_active

    # -- the model thread --------------------------------------------------

    def forget(self) -> None:
        """Empty every slot's KV cells (nothing may be in flight): benchmarks' cold starts, the twin's own prompts."""
        import llama_cpp

        for slot in self.slots:
            llama_cpp.llama_memory_seq_rm(self.mem, slot.seq_id, 0, -1)
            slot.tokens = []

    def refuse_new(self) -> None:
        """Later submits raise RuntimeError (the twin is closing); requests already queued are still answered."""
        with self._lock:
            self._closed = True

    def free(self) -> None:
        """Free the batch (on the model thread, after the loop)."""
        import llama_cpp

        self.refuse_new()
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None

    def _run(self) -> None:
        """The scheduler: admit waiting requests into free slots, decode one step, until nothing is in flight."""
        admitted: list[_Request] = []
        try:
            while True:
                with self._lock:
                    free = [s for s in self.slots if s.request is None]
                    admitted = [self._pending.popleft() for _ in range(min(len(free), len(self._pending)))]
                    self._n_active += len(admitted)
                    if not admitted and self._n_active == 0:
                        self._running = False
                        return
                # Short prefills first: a follow-up turn whose chat's cells hold its history (tens of tokens) is not
                # kept behind a prompt that must be prefilled whole (a new chat, a history trimmed at the budget:
                # ~400 tokens, ~1 s on one loaded core); the long one waits only the short ones' ~0.1 s each more.
                admitted.sort(key=self._new_tokens)
                for request in admitted:
                    self._admit(request)
                self._step()
        except BaseException as err:  # the KV state is unknown: every request in flight gets the error
            with self._lock:
                failed = admitted + [s.request for s in self.slots if s.request is not None] + list(self._pending)
                self._pending.clear()
                for slot in self.slots:
                    self._free(slot)
                self._n_active, self._running = 0, False
            self.forget()
            for request in {id(r): r for r in failed}.values():  # after a reply's None, nobody reads this
                request.put(err)

    def _admit(self, request: _Request) -> None:
        """Prefill `request`'s prompt in a free slot (reusing what its cells share) and emit its first token."""
        ids = request.ids
        if request.stop.is_set():  # the caller left while it waited
            return self._end(request)
        if len(ids) >= self.n_ctx_seq:
            with self._lock:
                self._n_active -= 1
            return request.put(UserError(f"{len(ids)} prompt tokens do not fit llama.cpp's context of "
                                         f"{self.n_ctx_seq} tokens per chat (batch_n_ctx)"))
        self.twin.stats["requests"] += 1
        slot, keep = self._take_slot(ids)
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self.mem, slot.seq_id, keep, -1)
        del slot.tokens[keep:]
        self.twin.stats["prefix_tokens_reused"] += keep
        slot.request, slot.n_new = request, 0
        slot.sampler = llama_sampler(self.llama, request.settings, self.twin.untempered_ids, ids)  # as one at a time
        rest = ids[keep:]
        for start in range(0, len(rest), self.llama.n_batch):  # llama.eval's batches
            chunk = rest[start:start + self.llama.n_batch]
            self._fill([(t, len(slot.tokens) + i, slot.seq_id, i == len(chunk) - 1) for i, t in enumerate(chunk)])
            slot.tokens += chunk
        self._emit(slot, slot.sampler.sample(self.llama._ctx, len(chunk) - 1))

    def _new_tokens(self, request: _Request) -> int:
        """About how many of `request`'s prompt tokens must be prefilled: those no slot's cells hold already."""
        return len(request.ids) - max(common_prefix_len(s.tokens, request.ids) for s in self.slots)

    def _take_slot(self, ids: list[int]) -> tuple[_Slot, int]:
        """The free slot for `ids` and how many of its leading tokens are already in its cells."""
        free = [s for s in self.slots if s.request is None]
        self._clock += 1
        oldest = min(free, key=lambda s: s.used_at)
        if not self.twin.prefix_cache:
            oldest.used_at = self._clock
            return oldest, 0

        def shared(slot: _Slot) -> int:  # at least one prompt token is decoded, for its logits
            return min(common_prefix_len(slot.tokens, ids), len(ids) - 1)

        best = max(free, key=shared)
        # Chats of one owner share their system prompt: only a longer match is worth evicting a more recent chat.
        slot = best if shared(best) >= shared(oldest) + 16 else oldest
        keep = shared(slot)
        stored, n = self.twin._best_prefix(ids)
        if len(slot.tokens) - keep >= 16:  # about to drop a chat's cells: keep a snapshot for its next turn
            snapshot = snapshot_seq(self.ctx, slot.seq_id)
            if snapshot is not None:
                self.twin._store_prefix(list(slot.tokens), snapshot)
        if stored is not None and n >= keep + 16:
            if restore_seq(self.ctx, slot.seq_id, stored[1]):
                slot.tokens, keep = list(stored[0]), n
            else:
                slot.tokens, keep = [], 0
        slot.used_at = self._clock
        return slot, keep

    def _step(self) -> None:
        """Decode the sampled token of every active slot in one batch, then sample each slot's next token."""
        for slot in self.slots:
            if slot.request is not None and slot.request.stop.is_set():
                self._finish(slot)
        active = [s for s in self.slots if s.request is not None]
        if not active:
            return
        pads = self._gap_pads(active)
        self.padded_rows += len(pads)
        rows = sorted([(s.next_token, len(s.tokens), s.seq_id, True) for s in active]
                      + [(0, len(s.tokens), s.seq_id, False) for s in pads], key=lambda row: row[2])
        self._fill(rows)
        import llama_cpp

        for slot in pads:  # the padding cell goes again: the idle chat's cells are as they were
            llama_cpp.llama_memory_seq_rm(self.mem, slot.seq_id, len(slot.tokens), -1)
        index = {row[2]: i for i, row in enumerate(rows)}
        for slot in active:
            slot.tokens.append(slot.next_token)
            self._emit(slot, slot.sampler.sample(self.llama._ctx, index[slot.seq_id]))

    def _gap_pads(self, active: list[_Slot]) -> list[_Slot]:
        """Idle slots in short gaps between active ones, to be decoded one throwaway token each.

        With a KV stream per chat, llama.cpp puts only consecutive sequence ids in one ubatch (split_equal), so active
        slots 0-6 and 8-15 cost two passes over the weights. Measured on 2 cores (IQ4_NL): a pass costs ~6 ms plus
        ~2.6 ms a row (1 row 7.9 ms, 16 rows 47.8 ms) and 15 chats split in two runs 1.7x one run of 16, so a gap of
        up to PAD_GAP idle slots is cheaper filled than split."""
        ids = [s.seq_id for s in active]
        return [self.slots[i] for a, b in zip(ids, ids[1:]) if 1 < b - a <= PAD_GAP + 1 for i in range(a + 1, b)]

    def _fill(self, rows: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants logits) rows."""
        import llama_cpp

        b = self._batch
        for i, (token, pos, seq_id, logits) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq_id
        b.n_tokens = len(rows)
        code = llama_cpp.llama_decode(self.ctx, b)
        if code != 0:
            raise RuntimeError(f"llama_decode failed with code {code} ({len(rows)} tokens)")

    def _emit(self, slot: _Slot, token: int) -> None:
        """Hand a sampled token to its request, or end the reply (end-of-turn, caller gone, length, context full)."""
        request = slot.request
        if token in self.twin.stop_ids or request.stop.is_set():
            return self._finish(slot)
        request.put(int(token))
        slot.n_new += 1
        if slot.n_new >= request.settings["max_new_tokens"] or len(slot.tokens) + 1 >= self.n_ctx_seq:
            return self._finish(slot)
        slot.next_token = int(token)

    def _finish(self, slot: _Slot) -> None:
        request = slot.request
        with self._lock:
            self._free(slot)
        self._end(request)

    def _end(self, request: _Request) -> None:
        with self._lock:
            self._n_active -= 1
        request.put(None)

    def _free(self, slot: _Slot) -> None:
        if slot.sampler is not None:
            slot.sampler.close()
        slot.request, slot.sampler = None, None
