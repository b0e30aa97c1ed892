"""What the app lets in from outside: which adapter folders or Hub repos may be loaded, and whether the
configuration needs the Hub at all."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

from ..runtime import UserError
from ..stage_io import ADAPTER_DIR

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")


def looks_like_hub_id(text: str | None) -> bool:
    """Whether `text` names a Hub repo ("owner/name") rather than a local path (as resolve_adapter decides: neither
    it nor its first folder exists here)."""
    text = (text or "").strip()
    return bool(_HUB_ID.fullmatch(text)) and not Path(text).exists() and not Path(text.split("/")[0]).exists()


def allowed_adapter_dir(text: str, settings) -> str:
    """The real path of adapter B's directory, if it lies inside SIMME_ADAPTER_DIRS with every file in it (symlinks
    resolved, so neither "../" nor a link leads out); a Hub id only with SIMME_ALLOW_HUB_ADAPTERS=1.
    UserError (one sentence, no path) otherwise."""
    text = text.strip()
    roots = settings.adapter_roots()
    inside = lambda path: any(path == root or path.startswith(root + os.sep) for root in roots)  # noqa: E731
    given = Path(text).expanduser()
    candidates = ([Path(root) / text for root in roots] if not given.is_absolute() else []) + [given]
    for candidate in candidates:
        real = os.path.realpath(candidate)
        if not os.path.isdir(real):
            continue
        if not inside(real):
            raise UserError("Adapter B must be a folder inside the allowed adapter folders (SIMME_ADAPTER_DIRS).")
        files = list(itertools.islice(Path(real).rglob("*"), 1001))
        if len(files) > 1000:
            raise UserError("Adapter B's folder holds more than 1,000 files: that is not a LoRA adapter.")
        if not all(inside(os.path.realpath(f)) for f in files):
            raise UserError("Adapter B has a file that links outside the allowed adapter folders.")
        if not (Path(real) / "adapter_config.json").is_file():
            raise UserError("Adapter B's folder has no adapter_config.json.")
        return real
    if looks_like_hub_id(text):
        if settings.allow_hub_adapters:
            return text
        raise UserError("Loading adapters from the Hub is turned off (the operator can set SIMME_ALLOW_HUB_ADAPTERS=1).")
    raise UserError("Adapter B was not found in the allowed adapter folders (SIMME_ADAPTER_DIRS).")


def needs_hub(settings) -> bool:
    """Whether the configuration may fetch from the Hub: a Hub twin, adapter or base model, or Hub ids allowed for B.
    The default adapter path (outputs/03_adapter, absent before 03 ran) is never taken for a Hub id."""
    if settings.twin:  # a merged twin replaces adapter and base
        return looks_like_hub_id(settings.twin) or settings.allow_hub_adapters
    adapter = settings.adapter if settings.adapter != ADAPTER_DIR else None
    return settings.allow_hub_adapters or any(map(looks_like_hub_id, (adapter, settings.adapter_b, settings.base_model)))
