"""Deploying the twin (issue 22) and what the app shows and records (issue 18 item 5):

- `app.py --export_gguf`: the merged twin + an Ollama Modelfile whose Go template renders exactly the app's prompt;
- `app.py --export_space`: a self-contained Space folder (the app, the package, the merged twin, pinned requirements,
  the plots, anonymized samples only when asked); `--push_to_hub` against a local stand-in of the Hub API;
- the Space folder in a fresh virtual environment with only its own requirements, as a Space runs it;
- replies with PII-shaped strings are masked for the client, streaming included (real server); "Real or twin?"
  guesses are recorded under the feedback quota.

Run: .venv/bin/python -m pytest -q tests/test_space.py        (-m "not slow": the fast ones)
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import simme_common as sc
from simme_common.serving.chat_ui import mask_pii, mask_pii_streaming
from conftest import app_server, wait_until_serving

ROOT = Path(__file__).resolve().parents[1]
OWNER = "Kai Surrogate"
PHONE, EMAIL = "0912 345 678", "jane.doe@example.com"
NO_HUB = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def run_app(args: list[str], env: dict | None = None, cwd: Path = ROOT, python: str = sys.executable, timeout=600):
    return subprocess.run([python, "app.py", *args], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A random LoRA on the tiny model, scaled up so the twin differs from its base (as test_app_security's)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lora = LoraConfig(r=2, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("adapter") / "twin"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> tuple[Path, Path]:
    """02's output (a plot, a style card with more than the app reads, a file that must stay home) and 01's test split."""
    from datasets import Dataset, DatasetDict
    from PIL import Image

    root = tmp_path_factory.mktemp("pipeline")
    analysis, prepared = root / "analysis", root / "prepared"
    analysis.mkdir()
    Image.new("RGB", (32, 24), (40, 120, 200)).save(analysis / "activity_by_hour.png")
    (analysis / "style_card.json").write_text(json.dumps({"schema_version": 1, "owner": OWNER, "vocabulary": ["secretword"],
                                                          "typing_gap_s": {"quantiles": {"p50": 0.3}}}))
    (analysis / "report.html").write_text("<p>stays home</p>")
    system = sc.build_system_prompt("one_on_one", OWNER, ["Nova"])
    samples = [[{"role": "system", "content": system}, {"role": "user", "content": f"question {i}?"},
                {"role": "assistant", "content": f"answer {i}"}] for i in range(3)]
    split = Dataset.from_dict({sc.MESSAGES: samples})
    DatasetDict(train=Dataset.from_dict({sc.MESSAGES: [samples[0] + [{"role": "user", "content": "trainonly"}]]}),
                validation=split, test=split).save_to_disk(str(prepared / "dataset"))
    return analysis, prepared


# --- Ollama Modelfile: the same prompt as the app --------------------------------------------------------

def render_go_template(template: str, messages: list[dict]) -> str:
    """Go text/template, the subset Ollama templates of modelfile.py use: text, {{ range .Messages }}...{{ end }},
    {{ .Role }}, {{ .Content }}, with the {{- / -}} whitespace trims. Anything else fails the test."""
    parts = re.split(r"({{-?\s*.*?\s*-?}})", template)
    for i, part in enumerate(parts):  # trims eat the whitespace of the neighbouring text
        if part.startswith("{{-") and i > 0:
            parts[i - 1] = parts[i - 1].rstrip()
        if part.endswith("-}}") and i + 1 < len(parts):
            parts[i + 1] = parts[i + 1].lstrip()
    out, loop = [], None
    for part in parts:
        action = re.fullmatch(r"{{-?\s*(.*?)\s*-?}}", part)
        name = action.group(1) if action else None
        if name == "range .Messages":
            loop = []
        elif name == "end":
            out += ["".join(m[p] if isinstance(p, str) and p in ("role", "content") else p for p in loop)
                    for m in messages]
            loop = None
        elif loop is not None:
            loop.append({".Role": "role", ".Content": "content"}[name] if action else part)
        elif action:
            raise AssertionError(f"unsupported template action {name!r}")
        else:
            out.append(part)
    return "".join(out)


def parse_modelfile(text: str) -> dict:
    quoted = dict(re.findall(r'^(TEMPLATE|SYSTEM) """(.*?)"""$', text, re.S | re.M))
    params = dict(re.findall(r"^PARAMETER (\w+) (.+)$", text, re.M))
    return {"from": re.search(r"^FROM (.+)$", text, re.M).group(1), **quoted, "params": params}


def test_export_gguf_writes_a_modelfile_whose_template_renders_exactly_the_apps_prompt(adapter, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "twin"
    result = run_app(["--export_gguf", str(out), "--adapter", str(adapter), "--base_model", str(tiny_model_dir),
                      "--owner", OWNER])
    assert result.returncode == 0, result.stderr[-3000:]
    mf = parse_modelfile((out / "Modelfile").read_text())
    assert (out / mf["from"].removeprefix("./")).stat().st_size > 10_000
    assert mf["params"]["stop"] == '"<|im_end|>"' and float(mf["params"]["temperature"]) == 0.7
    assert mf["SYSTEM"] == sc.build_system_prompt("one_on_one", OWNER, ["Friend"])
    tok = AutoTokenizer.from_pretrained(out)
    history = [{"role": "user", "content": "hey"}, {"role": "assistant", "content": "yo"},
               {"role": "assistant", "content": "sup"}, {"role": "user", "content": "what's up?\nanything new"}]
    app_messages = sc.build_app_messages(history, chat_type="one_on_one", owner=OWNER, others=["Friend"])
    app_prompt = tok.apply_chat_template(app_messages, tokenize=False, add_generation_prompt=True)
    # Ollama puts the Modelfile's SYSTEM first in .Messages when the request has no system message of its own.
    ollama = render_go_template(mf["TEMPLATE"], [{"role": "system", "content": mf["SYSTEM"]}] + app_messages[1:])
    assert ollama == app_prompt and app_prompt.count("<|im_start|>") == 5
    tok.chat_template = (out / "chat_template.server.jinja").read_text()  # what llama-server renders
    assert "{% generation %}" not in tok.chat_template and "{% endgeneration %}" not in tok.chat_template
    assert tok.apply_chat_template(app_messages, tokenize=False, add_generation_prompt=True) == app_prompt
    assert "Merged twin" in result.stdout and "MB" in result.stdout


def test_modelfile_llama3_template_renders_like_the_llama3_training_template(tiny_model_dir):
    from transformers import AutoTokenizer

    from simme_common.serving.modelfile import GO_TEMPLATES

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>"})
    tok.chat_template = sc.LLAMA3_TRAINING_TEMPLATE
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "ok"}]
    expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_go_template(GO_TEMPLATES["llama3"], messages) == expected


# --- the Space folder ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def space(adapter, tiny_model_dir, pipeline, tmp_path_factory) -> tuple[Path, str]:
    analysis, prepared = pipeline
    out = tmp_path_factory.mktemp("space") / "space"
    result = run_app(["--export_space", str(out), "--adapter", str(adapter), "--base_model", str(tiny_model_dir),
                      "--analysis_dir", str(analysis), "--prepared_dir", str(prepared), "--include_blind_samples"])
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


def test_space_folder_holds_the_app_package_merged_twin_and_pinned_requirements_only(space, pipeline):
    out, printed = space
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert {"app.py", "README.md", "requirements.txt", "simme_space.json", "simme_common/__init__.py",
            "simme_common/serving/handlers.py", "twin/twin.json", "twin/tokenizer.json", "insights/activity_by_hour.png",
            "insights/style_card.json", "blind/samples.jsonl"} <= set(files)
    assert not [f for f in files if f.endswith((".safetensors", ".bin", ".arrow", ".html", ".pyc"))]
    assert json.loads((out / "insights/style_card.json").read_text()).keys() == {"schema_version", "owner", "typing_gap_s"}
    assert "trainonly" not in (out / "blind/samples.jsonl").read_text()  # the test split only
    assert len((out / "blind/samples.jsonl").read_text().splitlines()) == 3 and "anonymized held-out samples" in printed
    readme = (out / "README.md").read_text()
    header = readme.split("---")[1]
    assert "sdk: gradio" in header and "app_file: app.py" in header and "sdk_version: 6." in header
    reqs = [line for line in (out / "requirements.txt").read_text().splitlines() if line and not line.startswith("--")]
    assert all(re.fullmatch(r"[\w.-]+==[\w.]+", line) for line in reqs), reqs
    assert not any(line.startswith("torch") for line in reqs) and any(line.startswith("llama-cpp-python==") for line in reqs)
    assert re.search(r"Space folder: .* \(\d+ files, [\d.]+ MB\)", printed) and "twin/twin-iq4_nl.gguf" in printed


def test_space_folder_without_blind_samples_has_the_game_off(adapter, tiny_model_dir, tmp_path):
    result = run_app(["--export_space", str(tmp_path / "s"), "--adapter", str(adapter), "--base_model", str(tiny_model_dir)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "s" / "blind").exists() and "SIMME_BLIND_SAMPLES" not in (tmp_path / "s" / "simme_space.json").read_text()
    refused = run_app(["--export_space", str(tmp_path)])  # not empty and no earlier export: never clobbered
    assert refused.returncode != 0 and "not empty" in refused.stderr


def test_space_with_a_model_repo_holds_no_twin_and_keeps_the_hub_online_for_it(tmp_path):
    from simme_common.settings import folder_defaults

    out = tmp_path / "space"
    result = run_app(["--export_space", str(out), "--model_repo", "someone/simme-twin"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (out / "twin").exists() and "HF_TOKEN" in (out / "README.md").read_text()
    settings = sc.AppSettings.from_env({}, defaults=folder_defaults(out))
    assert settings.twin == "someone/simme-twin" and sc.needs_hub(settings)
    assert not sc.needs_hub(sc.AppSettings(twin=str(out)))  # a local twin folder: the Hub stays offline


# --- --push_to_hub against a local stand-in of the Hub API ----------------------------------------------------

class FakeHub(BaseHTTPRequestHandler):
    """The Hub endpoints huggingface_hub calls to create a Space, set a secret and upload a folder (git LFS, basic)."""

    calls: list = []
    blobs: dict = {}

    def log_message(self, *args):
        pass

    def _json(self, obj, status=200):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self):
        if self.path.endswith("/settings"):
            self.calls.append(("PUT", self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            return self._json({})
        oid = self.path.rsplit("/", 1)[-1]
        FakeHub.blobs[oid] = self.rfile.read(int(self.headers["Content-Length"]))
        self.calls.append(("PUT", self.path, None))
        self._json({})

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        host = f"http://{self.headers['Host']}"
        if "/commit/" in self.path:
            lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
            self.calls.append(("POST", self.path, lines))
            return self._json({"commitUrl": f"{host}/spaces/someone/simme-twin/commit/{'1' * 40}", "commitOid": "1" * 40, "pullRequestUrl": None})
        body = json.loads(raw or b"{}")
        self.calls.append(("POST", self.path, body))
        if self.path == "/api/repos/create":
            return self._json({"url": f"{host}/spaces/{body['organization']}/{body['name']}"})
        if self.path.endswith("/secrets") or self.path == "/api/validate-yaml":
            return self._json({})
        if "/preupload/" in self.path:
            return self._json({"files": [{"path": f["path"], "uploadMode": "lfs" if f["size"] > 100_000 else "regular",
                                          "shouldIgnore": False} for f in body["files"]]})
        if self.path.endswith("/info/lfs/objects/batch"):
            return self._json({"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"], "actions": {"upload": {"href": f"{host}/lfs/{o['oid']}"}}}
                for o in body["objects"]]})
        self._json({"error": f"not stubbed: {self.path}"}, 404)


@pytest.fixture()
def fake_hub():
    FakeHub.calls, FakeHub.blobs = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_push_to_hub_creates_a_private_space_sets_the_login_secret_and_uploads_only_the_folder(
        adapter, tiny_model_dir, fake_hub, tmp_path):
    out = tmp_path / "space"
    (tmp_path / "outside.txt").write_text("must not be uploaded")
    env = {k: v for k, v in os.environ.items() if k not in NO_HUB and k != "SIMME_AUTH"}
    env.update(HF_ENDPOINT=fake_hub, HF_TOKEN="hf_test_token", HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")
    args = ["--export_space", str(out), "--adapter", str(adapter), "--base_model", str(tiny_model_dir),
            "--push_to_hub", "someone/simme-twin"]
    refused = subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "SIMME_AUTH" in refused.stderr and FakeHub.calls == []
    pushed = subprocess.run([sys.executable, "app.py", *args], cwd=ROOT, env={**env, "SIMME_AUTH": "owner:pw"},
                            capture_output=True, text=True, timeout=600)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    create = next(body for method, path, body in FakeHub.calls if path == "/api/repos/create")
    assert create["visibility"] == "private" and create["type"] == "space" and create["sdk"] == "gradio"
    secret = next(body for method, path, body in FakeHub.calls if path.endswith("/secrets"))
    assert secret["key"] == "SIMME_AUTH" and secret["value"] == "owner:pw"
    commit = next(lines for method, path, lines in FakeHub.calls if "/commit/" in path)
    uploaded = {e["value"]["path"]: e for e in commit if e["key"] in ("file", "lfsFile")}
    local = {str(p.relative_to(out)): p for p in out.rglob("*") if p.is_file()}
    assert set(uploaded) == set(local)  # every file of the folder, nothing outside it
    for path, entry in uploaded.items():
        data = (base64.b64decode(entry["value"]["content"]) if entry["key"] == "file"
                else FakeHub.blobs[entry["value"]["oid"]])
        assert data == local[path].read_bytes(), path
    assert "private" in pushed.stdout
    settings = [body for method, path, body in FakeHub.calls if path.endswith("/settings")]
    assert settings == [{"visibility": "private"}]  # an existing public Space is made private too
    FakeHub.calls.clear()
    public = subprocess.run([sys.executable, "app.py", *args, "--public"], cwd=ROOT, env={**env, "SIMME_AUTH": "owner:pw"},
                            capture_output=True, text=True, timeout=600)
    assert public.returncode == 0, public.stderr[-3000:]
    create = next(body for method, path, body in FakeHub.calls if path == "/api/repos/create")
    assert create["visibility"] == "public" and "public" in public.stdout


# --- masking PII in replies ----------------------------------------------------------------------------------

def test_streamed_reply_never_shows_a_digit_or_address_of_pii_it_masks_at_the_end():
    reply = f"sure\ncall me at {PHONE} or mail {EMAIL} lol\nsee u"
    assert mask_pii(reply) == "sure\ncall me at [phone] or mail [email] lol\nsee u"
    shown = [mask_pii_streaming(reply[:i]) for i in range(len(reply) + 1)]
    assert not any(re.search(r"\d|@", s) for s in shown)
    assert "call me at" in shown[-1] and "[phone]" in shown[-1]


@pytest.fixture(scope="module")
def pii_model_dir(tmp_path_factory):
    """The tiny model trained to answer the app's one-on-one "hi" with a phone number and an e-mail address."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import build_tiny_model

    out = build_tiny_model(tmp_path_factory.mktemp("pii_model"), hidden=64)
    tok, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    context = sc.build_app_messages([{"role": "user", "content": "hi"}], chat_type="one_on_one", owner="Me",
                                    others=["Friend"])
    prompt = sc.chat_token_ids(tok, context, add_generation_prompt=True)
    full = sc.chat_token_ids(tok, context + [{"role": "assistant", "content": f"call {PHONE} or {EMAIL}"}])
    ids = torch.tensor([full])
    labels = ids.clone()
    labels[0, :len(prompt)] = -100
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    greedy = model.generate(torch.tensor([prompt]), max_new_tokens=len(full) - len(prompt), do_sample=False)
    assert PHONE in tok.decode(greedy[0, len(prompt):]), "the tiny model did not learn its reply"
    return out


@pytest.mark.slow
def test_real_server_masks_pii_in_replies_while_streaming(pii_model_dir, tmp_path):
    from gradio_client import Client

    env = {**os.environ, "SIMME_BASE_MODEL": str(pii_model_dir), "SIMME_ADAPTER": str(tmp_path / "none"),
           "SIMME_BACKEND": "transformers", "SIMME_PREPARED_DIR": str(tmp_path), "SIMME_ANALYSIS_DIR": str(tmp_path)}
    with app_server(env, tmp_path / "app.log") as (proc, url):
        wait_until_serving(proc, url, tmp_path / "app.log")
        client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
        chat, box = client.predict("hello there", api_name="/chat")  # a message is all /chat needs
        assert chat[0]["content"][0]["text"] == "hello there" and chat[-1]["role"] == "assistant" and box == ""
        job = client.submit("hi", api_name="/chat", temperature=0, max_new_tokens=40, seed=1)
        job.result(timeout=120)
        texts = ["\n".join(m["content"][0]["text"] for m in out[0] if m["role"] == "assistant") for out in job.outputs()]
    assert len(texts) >= 3 and not any(PHONE[:4] in t or "@" in t for t in texts)
    assert "[phone]" in texts[-1] and "[email]" in texts[-1]


# --- "Real or twin?" guesses ------------------------------------------------------------------------------

def test_blind_guesses_are_recorded_per_reply_without_text_under_the_feedback_quota(tiny_model_dir, tmp_path):
    from datasets import load_from_disk

    from simme_common.serving.handlers import TwinApp

    twin = sc.load_twin(str(tiny_model_dir), None, backend="transformers")
    samples = [[{"role": "user", "content": "question?"}, {"role": "assistant", "content": f"call {PHONE}"}]]
    app = TwinApp(twin, settings=sc.AppSettings(feedback_dir=str(tmp_path), feedback_max_rows=3), blind_samples=samples)
    context, opt1, opt2, round_, _ = app.new_round()
    assert PHONE not in opt1 + opt2 and "[phone]" in [opt1, opt2][round_["real"]]  # surrogates masked too
    wrong = 1 - round_["real"]
    assert "Wrong" in app.guess(wrong, round_, {"rounds": 0, "correct": 0})[2]
    rows = load_from_disk(str(tmp_path / "blind_guesses"))
    assert rows.column_names == ["round_id", "shown", "guessed", "timestamp"] and len(rows) == 2
    by_shown = {r["shown"]: r["guessed"] for r in rows}
    assert by_shown == {"twin": "real", "real": "twin"} and rows[0]["round_id"] == round_["round_id"]
    assert abs(rows[0]["timestamp"] - time.time()) < 60
    app.guess(0, app.new_round()[3], {})  # 2 more rows would pass the quota of 3: refused, nothing written
    assert len(load_from_disk(str(tmp_path / "blind_guesses"))) == 2
    assert app.guess(0, None, {})[2].startswith("Start")


# --- the Space folder in a fresh virtual environment, as a Space runs it --------------------------------------

def cached_llama_wheel_dirs() -> list[Path]:
    """Folders of llama-cpp-python wheels built once per machine (make setup's patched one, a stock one): pip takes
    a wheel from them instead of building the sdist (~10 min on 2 cores); pip's own cache holds the rest."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "simme" / "wheels"
    return sorted({p.parent for p in root.glob("*/llama_cpp_python-*.whl")})


@pytest.mark.slow
def test_space_folder_serves_in_a_fresh_venv_with_only_its_requirements(space, tmp_path):
    from gradio_client import Client

    out, _ = space
    venv, log = tmp_path / "venv", tmp_path / "space.log"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    links = [arg for d in cached_llama_wheel_dirs() for arg in ("--find-links", str(d))]
    # --retries 0: the llama.cpp wheel index named in requirements.txt is unreachable here, and each retry waits.
    installed = subprocess.run([py, "-m", "pip", "install", "-q", "--retries", "0", "-r", str(out / "requirements.txt"),
                                *links], capture_output=True, text=True, timeout=1800)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert subprocess.run([py, "-c", "import torch"], capture_output=True).returncode != 0  # the Space needs no torch
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMME_") and k not in NO_HUB}
    refused = subprocess.run([py, "app.py"], cwd=out, env={**env, "SPACE_ID": "someone/simme"}, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2 and "SIMME_AUTH" in refused.stderr and "Space" in refused.stderr
    port = free_port()
    space_env = {**env, "SPACE_ID": "someone/simme", "SIMME_AUTH": "owner:pw", "GRADIO_SERVER_PORT": str(port)}
    with open(log, "w") as sink:
        proc = subprocess.Popen([py, "app.py"], cwd=out, env=space_env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(proc, url, log)
        assert re.search(rf"on 0\.0\.0\.0:{port} \(backend: llama\.cpp, model: .* twin", log.read_text())
        client = Client(url, auth=("owner", "pw"), verbose=False, download_files=False, analytics_enabled=False)
        for mode in ("One-on-one", "Group"):
            job = client.submit("hey how are you doing today", api_name="/chat", mode=mode, members="Ann, Bo",
                                sender="Bo", max_new_tokens=24, seed=3)
            job.result(timeout=120)
            chats = [o[0] for o in job.outputs()]
            assert len(chats) >= 3 and chats[-1][-1]["role"] == "assistant", (mode, chats[-1])
            if mode == "Group":
                assert chats[0][0]["content"][0]["text"].startswith("Bo: ")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
