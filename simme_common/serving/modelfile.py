"""An Ollama Modelfile for a merged twin folder: the training chat template as a Go template, its stop token, the
one-on-one system prompt and the app's default sampling, so `ollama create` runs the twin the app serves."""

from __future__ import annotations

import json

from ..chat_format import CHATML_TRAINING_TEMPLATE, LLAMA3_TRAINING_TEMPLATE, build_system_prompt

# Ollama's template language is Go's text/template. .Messages holds the chat, the Modelfile's SYSTEM prepended as a
# system message when the request has none. The texts equal chat_format's training templates with
# add_generation_prompt: tests/test_space.py renders both for the same chat and compares them.
GO_TEMPLATES = {
    "chatml": ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
               "<|im_start|>assistant\n"),
    # Llama 3's training template also trims each message; Go templates cannot, and the app's turns are stripped.
    "llama3": ("<|begin_of_text|>{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
               "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"),
}
STOP_TOKENS = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}
DEFAULT_SAMPLING = {"temperature": 0.7, "top_p": 0.9, "repeat_penalty": 1.1, "num_predict": 96}  # the app's sliders


def template_family(chat_template: str) -> str:
    """"chatml" or "llama3": which of chat_format's training templates `chat_template` is."""
    for family, template in (("chatml", CHATML_TRAINING_TEMPLATE), ("llama3", LLAMA3_TRAINING_TEMPLATE)):
        if chat_template.strip() == template.strip():
            return family
    raise ValueError("the twin's chat template is not one of SimMe's training templates (chat_format.py)")


def plain_chat_template(chat_template: str) -> str:
    """The training template without its {% generation %} markers (a TRL extension other Jinja renderers, such as
    llama.cpp's server with --chat-template-file, do not know): the same text for every chat."""
    import re

    return re.sub(r"{%-?\s*(?:end)?generation\s*-?%}", "", chat_template)


def modelfile_text(gguf_name: str, chat_template: str, owner: str, contact: str = "Friend") -> str:
    """The Modelfile of a twin folder whose GGUF is `gguf_name` (beside it), as `owner` chatting with `contact`."""
    family = template_family(chat_template)
    system = build_system_prompt("one_on_one", owner, [contact])
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{GO_TEMPLATES[family]}"""', f'SYSTEM """{system.replace(chr(34) * 3, "")}"""',
             f"PARAMETER stop {json.dumps(STOP_TOKENS[family])}"]
    lines += [f"PARAMETER {key} {value}" for key, value in DEFAULT_SAMPLING.items()]
    return "\n".join(lines) + "\n"
