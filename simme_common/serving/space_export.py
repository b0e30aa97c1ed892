"""`app.py --export_space`: a self-contained Hugging Face Space folder (the app, the package, the merged twin, pinned
requirements), and `--push_to_hub`: the folder uploaded to a private Space with its login as a secret."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..chat_format import MESSAGES
from ..runtime import UserError
from ..settings import SPACE_SETTINGS_FILE, env_name
from .chat_ui import is_blind_testable, parse_auth

# What the Space installs: no torch (llama.cpp runs the merged GGUF; transformers only tokenizes). Each is pinned
# to the version installed here when the folder is written (importlib.metadata), the versions the tests ran.
SPACE_PACKAGES = ("gradio", "transformers", "tokenizers", "jinja2", "huggingface_hub", "numpy", "gguf", "filelock",
                  "phonenumbers", "datasets", "llama-cpp-python")
# Prebuilt CPU wheels of llama-cpp-python (no 10-minute -march=native sdist build on the Space); pip builds the
# sdist only when the index lacks the pinned version.
LLAMA_CPP_WHEEL_INDEX = "https://abetlen.github.io/llama-cpp-python/whl/cpu"
STYLE_CARD_KEYS = ("schema_version", "owner", "typing_gap_s")  # what the app reads; the rest stays home


@dataclass(frozen=True)
class SpaceExport:
    """What goes into a Space folder."""

    out_dir: str
    app_file: str  # the app.py to copy
    twin_dir: str | None  # a merged twin folder (twin_dir.export_twin_dir) copied in as twin/; None with model_repo
    model_repo: str | None = None  # the Space downloads the twin from this (private) model repo instead
    analysis_dir: str | None = None  # 02's output: the plots and the style card's owner and typing gaps
    blind_samples: list | None = None  # anonymized held-out samples for "Real or twin?" (None: the tab is off)
    title: str = "SimMe twin"


def space_requirements() -> str:
    """requirements.txt of a Space: SPACE_PACKAGES pinned to the installed versions (local build labels dropped)."""
    from importlib.metadata import PackageNotFoundError, version

    lines = [f"--extra-index-url {LLAMA_CPP_WHEEL_INDEX}"]
    for name in SPACE_PACKAGES:
        try:
            lines.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            raise UserError(f"{name} is not installed here, so the Space cannot pin it: run make setup") from None
    return "\n".join(lines) + "\n"


def space_readme(title: str, blind: bool, remote_twin: bool) -> str:
    """The Space README: the Spaces YAML header (sdk gradio, app_file app.py) and what the Space holds."""
    from importlib.metadata import version
    import platform

    header = ["---", f"title: {json.dumps(title)}", "emoji: 💬", "colorFrom: blue", "colorTo: purple", "sdk: gradio",
              f"sdk_version: {version('gradio')}", f'python_version: "{".".join(platform.python_version_tuple()[:2])}"',
              "app_file: app.py", "short_description: Chat with an AI twin (private, login required)", "pinned: false",
              "---", ""]
    body = [f"# {title}", "", "An AI twin built with SimMe: a small language model fine-tuned on one person's messages. "
            "It is not that person and it can be wrong.", "",
            "- The app refuses to start without the secret `SIMME_AUTH=user:password` (its login).",
            f"- The twin {'is downloaded at start-up from the model repo in `simme_space.json` (secret `HF_TOKEN`)' if remote_twin else 'is `twin/`: the LoRA merged into the base, one GGUF run by llama.cpp'}.",
            "- Insights: the plots of SimMe's analysis stage, computed on anonymized messages.",
            f"- Real or twin?: {'on, with anonymized held-out samples in `blind/`' if blind else 'off (no samples exported)'}.",
            "- Nothing is stored unless the variable `SIMME_FEEDBACK_DIR` is set.", ""]
    return "\n".join(header + body)


def check_space_dir(path: str | Path) -> Path:
    """`path` if a Space export may go there: missing, empty or an earlier export; UserError otherwise (never clobbered)."""
    out = Path(path)
    if out.exists() and any(out.iterdir()) and not (out / SPACE_SETTINGS_FILE).exists():
        raise UserError(f"{out} is not empty and holds no earlier Space export ({SPACE_SETTINGS_FILE}): pick another "
                        "--export_space folder")
    return out


def write_space(spec: SpaceExport) -> list[tuple[str, int]]:
    """Write the Space folder `spec.out_dir` (replacing an earlier export there); its files and their sizes."""
    out = check_space_dir(spec.out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copyfile(spec.app_file, out / "app.py")
    package = Path(__file__).resolve().parents[1]
    for src in sorted(package.rglob("*.py")):
        dst = out / "simme_common" / src.relative_to(package)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    defaults = {"backend": "llama.cpp", "prepared_dir": "no_prepared_data"}  # AppSettings fields
    if spec.model_repo:
        defaults["twin"] = spec.model_repo
    elif spec.twin_dir:
        shutil.copytree(spec.twin_dir, out / "twin")
        defaults["twin"] = "twin"
    else:
        raise UserError("a Space needs the twin: an adapter to merge, or --model_repo")
    if spec.analysis_dir:
        _copy_insights(Path(spec.analysis_dir), out / "insights")
        defaults["analysis_dir"] = "insights"
    if spec.blind_samples:
        (out / "blind").mkdir()
        lines = (json.dumps(s, ensure_ascii=False) for s in spec.blind_samples)
        (out / "blind" / "samples.jsonl").write_text("\n".join(lines) + "\n")
        defaults["blind_samples"] = "blind/samples.jsonl"
    (out / SPACE_SETTINGS_FILE).write_text(json.dumps({env_name(k): v for k, v in defaults.items()}, indent=2) + "\n")
    (out / "requirements.txt").write_text(space_requirements())
    (out / "README.md").write_text(space_readme(spec.title, bool(spec.blind_samples), bool(spec.model_repo)))
    (out / ".gitattributes").write_text("*.gguf filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n")
    return [(str(p.relative_to(out)), p.stat().st_size) for p in sorted(out.rglob("*")) if p.is_file()]


def _copy_insights(analysis: Path, dst: Path) -> None:
    """02's PNG plots and the style card's owner and typing gaps (its word lists and other fields stay home)."""
    plots = sorted(analysis.glob("*.png"))
    if not plots:
        raise UserError(f"--analysis_dir {analysis} holds no plots (*.png): run 02_analyze.py first")
    dst.mkdir()
    for plot in plots:
        shutil.copyfile(plot, dst / plot.name)
    card = analysis / "style_card.json"
    if card.exists():
        data = json.loads(card.read_text())
        (dst / "style_card.json").write_text(json.dumps({k: data[k] for k in STYLE_CARD_KEYS if k in data}, indent=2))


def load_blind_samples(prepared_dir: str | Path) -> list[list[dict]]:
    """The usable held-out samples of 01's test split (anonymized: surrogate names and numbers)."""
    from datasets import load_from_disk

    path = Path(prepared_dir) / "dataset"
    if not path.exists():
        raise UserError(f"--include_blind_samples needs 01's test split at {path}: run 01_prepare.py first")
    return [m for m in load_from_disk(str(path))["test"][MESSAGES] if is_blind_testable(m)]


def push_space(folder: str | Path, repo_id: str, auth: str | None, public: bool = False) -> str:
    """Create the Space `repo_id` (or set an existing one) private unless `public`, set its SIMME_AUTH secret, upload
    `folder`; its URL.

    The Hub token comes from the environment (HF_TOKEN) or `hf auth login`, never from a flag.
    """
    if not auth:
        raise UserError("refusing to push a Space without a login: set SIMME_AUTH=user:password here (it becomes the "
                        "Space's secret)")
    parse_auth(auth)
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=not public, exist_ok=True)
    # create_repo leaves an existing Space's visibility as it was: a public one becomes private unless `public`.
    api.update_repo_settings(repo_id, repo_type="space", private=not public)
    api.add_space_secret(repo_id, env_name("auth"), auth, description="SimMe login (user:password)")
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="space",
                      commit_message="SimMe Space export")
    return str(url)
