"""The conversational contract shared by 01, 03, 04 and the app: column and role names, the system prompt,
bubbles, the training chat templates ({% generation %} masks), prompt token ids, stop tokens and context trimming."""

from __future__ import annotations

import bisect
from typing import Any


MESSAGES = "messages"  # TRL conversational column: [{"role", "content"}, ...]

OWNER_ROLE = "assistant"  # the imitated person is always `assistant`

OTHER_ROLE = "user"

CHAT_TYPES = ("one_on_one", "group")

BUBBLE_DELIMITER = "\n"  # bubbles of one burst are joined by a newline; the app splits them back

# Target of a group-chat sample in which the owner let others talk and stayed silent (docs/prepare.md).
SILENT_REPLY = "<silent>"

SYSTEM_PROMPT_BASE = "Write a realistic text message chat. Avoid repetition."


def build_system_prompt(chat_type: str, owner: str, others: list[str], title: str | None = None) -> str:
    """System message of a sample: the seed's instruction plus who is talking, one-on-one vs group."""
    if chat_type not in CHAT_TYPES:
        raise ValueError(f"chat_type must be one of {CHAT_TYPES}, got {chat_type!r}")
    if chat_type == "one_on_one":
        other = others[0] if others else "a friend"
        who = f"This is a one-on-one chat between {owner} and {other}. You are {owner}."
    else:
        names = ", ".join(others) if others else "friends"
        named = f' "{title}"' if title else ""
        who = (
            f"This is a group chat{named} with {owner}, {names}. You are {owner}. "
            f"Each message starts with its sender's name. Reply {SILENT_REPLY} to stay silent."
        )
    return f"{SYSTEM_PROMPT_BASE} {who}"


def format_user_turn(chat_type: str, speaker: str, text: str) -> str:
    """Content of a `user` turn: in groups prefixed with the speaker's name, in one-on-one as is."""
    return f"{speaker}: {text}" if chat_type == "group" else text


def split_bubbles(reply: str) -> list[str]:
    """Split a generated owner turn into chat bubbles (non-empty, stripped); the silent marker gives none."""
    if reply.strip() == SILENT_REPLY:
        return []
    return [b.strip() for b in reply.split(BUBBLE_DELIMITER) if b.strip() and b.strip() != SILENT_REPLY]


# ChatML (SmolLM2, Qwen2 family) with TRL's {% generation %} markers around the assistant's content and
# end-of-turn token, so `assistant_only_loss=True` trains exactly the owner's words and <|im_end|>.
CHATML_TRAINING_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama 3 family (e.g. meta-llama/Llama-3.1-8B[-Instruct]): header tokens exist in the base vocab too.
LLAMA3_TRAINING_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def training_chat_template(tokenizer) -> str:
    """A chat template with {% generation %} markers for this tokenizer's family (ChatML or Llama 3).

    Families are recognised by their special tokens; a tokenizer with neither (e.g. a base model without a
    template) gets ChatML with its own end-of-sequence token added as needed by `ensure_training_template`.
    """
    vocab = tokenizer.get_vocab()
    if "<|start_header_id|>" in vocab and "<|eot_id|>" in vocab:
        return LLAMA3_TRAINING_TEMPLATE
    return CHATML_TRAINING_TEMPLATE


def end_of_turn_token(tokenizer) -> str:
    """The token that ends an owner turn under the training template (generation stops on it)."""
    return "<|eot_id|>" if training_chat_template(tokenizer) == LLAMA3_TRAINING_TEMPLATE else "<|im_end|>"


def ensure_training_template(tokenizer) -> Any:
    """Give `tokenizer` the training chat template, its end-of-turn token as eos and a pad token (in place)."""
    template = training_chat_template(tokenizer)
    eot = end_of_turn_token(tokenizer)
    if eot not in tokenizer.get_vocab():
        # ChatML markers are new to this vocabulary: add them as special tokens (the caller resizes embeddings).
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = template
    tokenizer.eos_token = eot
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        # A distinct pad token would grow the vocab; reusing eos is safe because labels come from the mask.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def split_target(messages: list[dict]) -> tuple[list[dict], str]:
    """A sample -> (context = every message but the final owner turn, the owner's real reply)."""
    if not messages or messages[-1].get("role") != OWNER_ROLE:
        raise ValueError("the last message of a sample must be an owner (assistant) turn")
    return list(messages[:-1]), str(messages[-1].get("content") or "")


def chat_token_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of `messages` rendered with the tokenizer's (training) chat template."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end a reply: the end-of-turn token of the training template and the tokenizer's eos."""
    ids = {tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)), tokenizer.eos_token_id}
    return sorted(i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id)


def untempered_token_ids(tokenizer) -> list[int]:
    """Tokens that end a bubble or the turn: the stop tokens and the bubble delimiter (where it is one token).
    Sampling draws them at their temperature-1 probability (`sampling.untempered_stop_logits`), so a temperature
    below 1 shortens neither the bubbles nor the reply."""
    delimiter = tokenizer(BUBBLE_DELIMITER, add_special_tokens=False)["input_ids"]
    return sorted(set(stop_token_ids(tokenizer)) | set(delimiter if len(delimiter) == 1 else []))


def trim_context(messages: list[dict], count_tokens, max_tokens: int,
                 block_tokens: int = 1) -> tuple[list[dict], int]:
    """Drop the oldest turns (never the system prompt or the last turn) until `count_tokens(messages) <= max_tokens`.

    With `block_tokens` > 1 (the app: a quarter of the budget) turns are dropped in blocks of about that many tokens,
    cut at points fixed from the start of the chat, so a growing chat keeps the same first turn for several turns in
    a row: its KV cache is reused (a follow-up costs only the new tokens) instead of every turn shifting the start
    and re-prefilling the whole budget. The kept context stays between about budget - block and the budget.
    The default (1) keeps as many turns as fit (evaluation).
    Returns the kept messages and how many turns were dropped.
    """
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(head):]
    if len(turns) <= 1 or count_tokens(head + turns) <= max_tokens:
        return head + turns, 0
    cuts = list(range(len(turns)))
    if block_tokens > 1:  # block starts depend only on the turns before them, so they never move
        cuts, size = [0], 0
        for i, turn in enumerate(turns[:-1]):
            size += count_tokens([turn])
            if size >= block_tokens:
                cuts.append(i + 1)
                size = 0
    # A later start never has more tokens: binary search for the first start after which the rest fits.
    first_fit = bisect.bisect_left(cuts, True, key=lambda cut: count_tokens(head + turns[cut:]) <= max_tokens)
    start = cuts[min(first_fit, len(cuts) - 1)]
    while start < len(turns) - 1 and count_tokens(head + turns[start:]) > max_tokens:
        start += 1  # the last blocks alone are too long: fall back to turn by turn
    return head + turns[start:], start
