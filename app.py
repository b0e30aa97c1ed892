"""SimMe app: chat with the owner's AI twin (one-on-one or in a group), compare two adapters, see the style
insights and play "Real or twin?". Private by default: no share link, a login required anywhere but on this
machine (throttled), no chat text logged, nothing stored unless SIMME_FEEDBACK_DIR is set, every client input
capped server-side, no analytics, the Hub offline unless a Hub adapter is configured. See docs/app.md.

python app.py                                              # http://127.0.0.1:7860, adapter outputs/03_adapter
SIMME_ADAPTER=outputs/03_adapter SIMME_AUTH=me:secret GRADIO_SERVER_PORT=7861 python app.py
python app.py --export_space build/space --analysis_dir data/02_analysis          # a Space folder (docs/deploy.md)
SIMME_AUTH=me:secret python app.py --export_space build/space --push_to_hub you/simme   # ... pushed, private
python app.py --export_gguf build/twin                     # the merged twin GGUF + an Ollama Modelfile

Every setting is an environment variable SIMME_<FIELD> of simme_common.settings.AppSettings, read once by main();
the flags (AppArguments) only export.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

import simme_common as sc
from simme_common.serving.handlers import GROUP, ONE_ON_ONE, TwinApp, client_errors, load_twin, sender_choices
from simme_common.settings import folder_defaults


@dataclass
class AppArguments:
    """Flags of app.py: without any, it serves (settings from SIMME_* variables); with --export_*, it writes."""

    export_space: str | None = field(default=None, metadata={"help": "Write a self-contained Hugging Face Space folder here."})
    push_to_hub: str | None = field(default=None, metadata={"help": "With --export_space: upload it to this Space "
                                    "(created private; SIMME_AUTH from the environment becomes its secret)."})
    public: bool = field(default=False, metadata={"help": "With --push_to_hub: create the Space public."})
    export_gguf: str | None = field(default=None, metadata={"help": "Write the merged twin GGUF, its tokenizer and an "
                                    "Ollama Modelfile here."})
    adapter: str | None = field(default=None, metadata={"help": "Adapter to export (default: SIMME_ADAPTER)."})
    base_model: str | None = field(default=None, metadata={"help": "Its base (default: SIMME_BASE_MODEL or the adapter's)."})
    quant: str = field(default="iq4_nl", metadata={"help": "GGUF type of the exported twin (see serving/gguf_export.py)."})
    model_repo: str | None = field(default=None, metadata={"help": "The Space downloads the twin folder (--export_gguf) "
                                   "from this Hub model repo at start-up (HF_TOKEN secret) instead of holding it."})
    analysis_dir: str | None = field(default=None, metadata={"help": "02's output: copy its plots into the Space."})
    include_blind_samples: bool = field(default=False, metadata={"help": "Copy 01's anonymized test samples into the "
                                        "Space for \"Real or twin?\" (off otherwise)."})
    prepared_dir: str | None = field(default=None, metadata={"help": "01's output (default: SIMME_PREPARED_DIR)."})
    owner: str | None = field(default=None, metadata={"help": "Owner name in the Modelfile's system prompt "
                              "(default: the style card's)."})

def private_environment(settings: sc.AppSettings, environ=os.environ) -> None:
    """No analytics, and the Hub offline unless the configuration needs it (a variable already set is kept).

    huggingface_hub read HF_HUB_OFFLINE when gradio imported it, so its constant is set too.
    """
    environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    if not sc.needs_hub(settings):
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            environ.setdefault(name, "1")
    if environ is os.environ and environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True


def build_demo(app: TwinApp, plots: list[str] = ()) -> gr.Blocks:
    """The Gradio UI: Chat (with A/B), Insights and Real or twin? tabs. Blocks apps have no flagging."""
    cfg = app.settings
    with gr.Blocks(title="SimMe: chat with an AI twin", analytics_enabled=False) as demo:
        gr.Markdown(f"## SimMe\n**You are chatting with an AI twin**: a language model imitating how "
                    f"{app.owner} texts. It is not {app.owner}, and it can be wrong.")
        if app.banner:
            gr.Markdown(f"> ⚠️ {app.banner}")
        with gr.Tab("Chat"):
            with gr.Row():
                with gr.Column(scale=3):
                    # No "share" button (it posts the chat to a Hub discussion); copies are marked as AI-written.
                    chatbot = gr.Chatbot(label=f"{app.owner} (AI twin)", height=480, feedback_options=("Like", "Dislike"),
                                         buttons=["copy", "copy_all"], watermark="(written by an AI twin)")
                    msg = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, lines=1)
                    with gr.Row():
                        send = gr.Button("Send", variant="primary")
                        clear = gr.Button("Clear chat")
                with gr.Column(scale=2):
                    mode = gr.Radio([ONE_ON_ONE, GROUP], value=ONE_ON_ONE, label="Chat mode")
                    contact = gr.Dropdown(app.contacts or ["Friend"], value=(app.contacts or ["Friend"])[0],
                                          allow_custom_value=True, label="You are (pick a contact or type a name)")
                    with gr.Group(visible=False) as group_box:
                        members = gr.Textbox("Alex, Sam", label="Group members (comma-separated)")
                        sender = gr.Dropdown(["Alex", "Sam"], value="Alex", allow_custom_value=True, label="Send as")
                        title = gr.Textbox("", label="Group name (optional)")
                    with gr.Accordion("Generation settings", open=True):
                        temperature = gr.Slider(0.0, 1.5, value=0.7, step=0.05, label="Temperature")
                        auto_rule = " ".join((sc.auto_temperature.__doc__ or "").split())
                        auto_temp = gr.Checkbox(False, label="Auto temperature", info=auto_rule)
                        top_p = gr.Slider(0.1, 1.0, value=0.9, step=0.05, label="Top-p")
                        repetition_penalty = gr.Slider(1.0, 2.0, value=1.1, step=0.05, label="Repetition penalty")
                        max_new_tokens = gr.Slider(8, cfg.max_new_tokens, value=min(96, cfg.max_new_tokens), step=8,
                                                   label="Max new tokens")
                        has_gaps = sc.typing_gap_seconds(app.style_card) is not None
                        pace = gr.Checkbox(False, label="Pace bubbles with the owner's typing gaps", interactive=has_gaps,
                                           info=None if has_gaps else f"needs {cfg.analysis_dir}/style_card.json")
                        seed = gr.Number(-1, precision=0, label="Seed (-1: random)")
                    with gr.Accordion("A/B: compare two adapters", open=False):
                        adapter_b = gr.Textbox(cfg.adapter_b or "", label="Adapter B (path or Hub id)")
                        load_b = gr.Button("Load adapter B")
                        status_b = gr.Markdown(f"Adapter B: `{cfg.adapter_b}`" if app.twin_b else "No adapter B.")
                        send_ab = gr.Button("Send to A and B", variant="primary")
                        with gr.Row():
                            reply_1 = gr.Textbox(label="Reply 1", interactive=False)
                            reply_2 = gr.Textbox(label="Reply 2", interactive=False)
                        with gr.Row():
                            pick_1, pick_2 = gr.Button("1 is better"), gr.Button("2 is better")
                        pending = gr.State(None)

            settings = [temperature, auto_temp, top_p, repetition_penalty, max_new_tokens]
            who = [mode, contact, members, sender, title]
            chat = dict(fn=client_errors(app.respond), inputs=[msg, chatbot, *who, *settings, pace, seed], outputs=[chatbot, msg],
                        concurrency_id="generate", concurrency_limit=cfg.concurrency)
            running = [msg.submit(**chat, api_name="chat"), send.click(**chat, api_visibility="private")]
            # Clearing or switching mode stops a reply still streaming, so it cannot repaint the old chat.
            clear.click(lambda: ([], None, "", ""), None, [chatbot, pending, reply_1, reply_2], cancels=running,
                        api_visibility="private")
            mode.change(lambda m: (gr.update(visible=m == GROUP), gr.update(visible=m != GROUP), None),
                        mode, [group_box, contact, chatbot], cancels=running, api_visibility="private")
            members.change(lambda m, s: sender_choices(m, s, cfg), [members, sender], sender, api_visibility="private")
            chatbot.like(client_errors(app.like), [chatbot, *who], None, api_visibility="private")
            load_b.click(client_errors(app.load_b), adapter_b, status_b, api_visibility="private")
            send_ab.click(client_errors(app.respond_ab), [msg, chatbot, *who, *settings, seed], [chatbot, msg, reply_1, reply_2, pending],
                          concurrency_id="generate", concurrency_limit=cfg.concurrency, api_name="chat_ab")
            for slot, button in enumerate((pick_1, pick_2)):
                button.click(client_errors(lambda p, h, s=slot: app.pick(s, p, h)), [pending, chatbot], [chatbot, reply_1, reply_2, pending],
                             api_visibility="private")

        with gr.Tab("Insights"):
            if plots:
                for pair in (plots[i:i + 2] for i in range(0, len(plots), 2)):
                    with gr.Row(equal_height=True):
                        for plot in pair:
                            gr.Image(plot, label=Path(plot).stem.replace("_", " "), interactive=False,
                                     buttons=["download", "fullscreen"])
            else:
                gr.Markdown(f"No plots in `{cfg.analysis_dir}`: run 02_analyze first (`accelerate launch 02_analyze.py`).")

        with gr.Tab("Real or twin?"):
            if not app.blind_samples and cfg.twin:
                gr.Markdown("Off: this twin was exported without held-out samples (`--include_blind_samples`).")
            elif not app.blind_samples:
                gr.Markdown(f"No held-out test split in `{cfg.prepared_dir}/dataset`: run 01_prepare first.")
            else:
                gr.Markdown("One reply is what the owner really sent, the other is the twin's. Which one is real?")
                context = gr.Chatbot(label="Held-out conversation", height=320, buttons=[])
                with gr.Row():
                    option_1 = gr.Textbox(label="Reply 1", interactive=False)
                    option_2 = gr.Textbox(label="Reply 2", interactive=False)
                with gr.Row():
                    guess_1, guess_2 = gr.Button("Reply 1 is real"), gr.Button("Reply 2 is real")
                    next_round = gr.Button("New round", variant="primary")
                verdict = gr.Markdown()
                real_index, score = gr.State(None), gr.State({"rounds": 0, "correct": 0})
                next_round.click(client_errors(app.new_round), None, [context, option_1, option_2, real_index, verdict],
                                 concurrency_id="generate", concurrency_limit=cfg.concurrency, api_visibility="private")
                for slot, button in enumerate((guess_1, guess_2)):
                    button.click(client_errors(lambda r, s, slot=slot: app.guess(slot, r, s)), [real_index, score], [real_index, score, verdict],
                                 api_visibility="private")
    return demo


def load_app(settings: sc.AppSettings) -> tuple[TwinApp, list[str]]:
    """Load the twin(s) and the pipeline's outputs named by the settings (missing pieces degrade politely)."""
    banner = None
    if settings.twin:  # a merged twin folder: no base model, no merge, no torch
        from simme_common.serving.twin_dir import load_twin_dir

        twin = load_twin_dir(settings.twin, settings.llama_options())
    else:
        try:
            twin = load_twin(settings, settings.adapter)
        except sc.UserError as err:
            twin = load_twin(settings, None)
            banner = f"{str(err).rstrip('.')}. Running the base model without an adapter."
    twin_b = load_twin(settings, settings.adapter_b) if settings.adapter_b and not settings.twin else None
    analysis, prepared = Path(settings.analysis_dir), Path(settings.prepared_dir)
    style_card = json.loads((analysis / "style_card.json").read_text()) if (analysis / "style_card.json").exists() else None
    owner, contacts, blind = (style_card or {}).get("owner"), [], []
    if (prepared / "messages").exists() or (prepared / "dataset").exists():
        from datasets import load_from_disk

        if (prepared / "messages").exists():
            rows = load_from_disk(str(prepared / "messages"))
            contacts, found = sc.rank_contacts(list(rows["sender"]), list(rows["is_owner"]))
            owner = owner or found
        if (prepared / "dataset").exists():
            test = load_from_disk(str(prepared / "dataset"))["test"]
            blind = [m for m in test[sc.MESSAGES] if sc.is_blind_testable(m)]
    if settings.blind_samples:  # an exported Space: anonymized held-out samples, one JSON chat per line
        lines = Path(settings.blind_samples).read_text().splitlines()
        blind = [m for m in (json.loads(line) for line in lines if line.strip()) if sc.is_blind_testable(m)]
    plots = sorted(str(p) for p in analysis.glob("*.png"))
    app = TwinApp(twin, settings=settings, owner=owner or "Me", contacts=contacts[:50], style_card=style_card,
                  blind_samples=blind, twin_b=twin_b, banner=banner)
    return app, plots


def export(args: AppArguments, settings: sc.AppSettings) -> None:
    """--export_space (and --push_to_hub) or --export_gguf: write the folder, print its files and size."""
    import tempfile

    from simme_common.serving import space_export as sx
    from simme_common.serving.twin_dir import export_twin_dir

    if args.push_to_hub and not args.export_space:
        raise sc.UserError("--push_to_hub uploads the folder of --export_space: give both")
    if args.push_to_hub and not settings.auth:
        raise sc.UserError("refusing to push a Space without a login: set SIMME_AUTH=user:password here (it becomes "
                           "the Space's secret)")
    adapter, base = args.adapter or settings.adapter, args.base_model or settings.base_model
    if args.export_gguf:
        twin = export_twin_dir(base, adapter, args.export_gguf, args.quant, keep=settings.gguf_keep)
        info = json.loads((twin / "twin.json").read_text())
        card = Path(args.analysis_dir or settings.analysis_dir) / "style_card.json"
        owner = args.owner or (json.loads(card.read_text()).get("owner") if card.exists() else None) or "Me"
        from simme_common.serving.modelfile import modelfile_text, plain_chat_template
        from transformers import AutoTokenizer

        template = AutoTokenizer.from_pretrained(str(twin)).chat_template
        (twin / "Modelfile").write_text(modelfile_text(info["gguf"], template, owner))
        (twin / "chat_template.server.jinja").write_text(plain_chat_template(template))
        print_folder(twin, "Merged twin")
        print(f"Run it: cd {twin} && ollama create simme-twin -f Modelfile, or llama-server -m {info['gguf']} "
              "--jinja --chat-template-file chat_template.server.jinja")
    if args.export_space:
        sx.check_space_dir(args.export_space)  # before minutes of merging
        blind = sx.load_blind_samples(args.prepared_dir or settings.prepared_dir) if args.include_blind_samples else None
        with tempfile.TemporaryDirectory() as tmp:
            twin_dir = None if args.model_repo else export_twin_dir(base, adapter, Path(tmp) / "twin", args.quant,
                                                                    keep=settings.gguf_keep)
            sx.write_space(sx.SpaceExport(args.export_space, __file__, twin_dir and str(twin_dir), args.model_repo,
                                          args.analysis_dir, blind))
        print_folder(Path(args.export_space), "Space folder")
        if blind:
            print(f"Real or twin?: {len(blind):,} anonymized held-out samples copied (surrogate names and numbers).")
        if args.push_to_hub:
            url = sx.push_space(args.export_space, args.push_to_hub, settings.auth, public=args.public)
            print(f"Pushed to {url} ({'public' if args.public else 'private'}; secret SIMME_AUTH set).")


def print_folder(folder: Path, what: str) -> None:
    """Each file of `folder` with its size, then the total."""
    files = [(p, p.stat().st_size) for p in sorted(folder.rglob("*")) if p.is_file()]
    for path, size in files:
        print(f"  {size / 1e6:10.2f} MB  {path.relative_to(folder)}")
    print(f"{what}: {folder} ({len(files):,} files, {sum(s for _, s in files) / 1e6:,.1f} MB)")


def main(argv: list[str] | None = None) -> None:
    """Read the settings once, then export (flags) or load the twin, build the UI and serve it."""
    import sys

    started = time.perf_counter()
    argv = sys.argv[1:] if argv is None else argv
    if argv:  # transformers' parser only when there are flags: serving stays as lean as before
        from transformers import HfArgumentParser

        (args,) = HfArgumentParser(AppArguments).parse_args_into_dataclasses(args=argv)
    else:
        args = AppArguments()
    settings = sc.AppSettings.from_env(defaults=folder_defaults(Path(__file__).resolve().parent))
    if args.export_space or args.export_gguf or args.push_to_hub:
        return export(args, settings)
    login = sc.parse_auth(settings.auth)
    settings.check_exposure()
    private_environment(settings)  # before gradio builds anything and before any model is loaded
    host, port = settings.listen_address()
    app, plots = load_app(settings)
    demo = build_demo(app, plots)
    hub = "offline" if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") else "online"
    info = app.twin.info()
    model = info.get("twin") or info.get("adapter") or "no adapter"
    print(f"SimMe app ready in {time.perf_counter() - started:.1f} s on {host}:{port} (backend: {app.twin.backend}, "
          f"model: {info.get('base')} + {model}, {info.get('quantization') or 'unquantized'}; Hub: {hub})", flush=True)
    # Never share=True: the twin speaks for a real person. No run history: it would keep chats in the browser.
    # Only the plot files are served; show_error=False keeps exception texts (paths) in the server log, while
    # gr.Error messages, written for users, still reach them.
    throttle = sc.LoginThrottle(*login) if login else None
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency).launch(
        server_name=host, server_port=port, auth=throttle.check if throttle else None, share=False,
        run_history=False, allowed_paths=list(plots), show_error=False, max_file_size=settings.max_upload_bytes)


if __name__ == "__main__":
    sc.run_main(main)
