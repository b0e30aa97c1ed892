"""The C allocator under 03: mimalloc, preloaded by re-executing the command, where it is installed.

A training step frees and reallocates the same few hundred megabytes of activations and gradients every step.
glibc's malloc serves blocks above its mmap threshold (at most 32 MB) with fresh mappings and trims freed heap
memory back to the OS, so their pages are faulted in again at every step: on a 2-core VM a whole demo run on it
took 1.6 times as long per token and peaked 3 GB higher. mimalloc with purging off (`MIMALLOC_PURGE_DELAY=-1`)
keeps freed pages for reuse. Tuning glibc instead (`mallopt`: no mmap, no trim) fragmented its heap over a whole
run (docs/train.md, Efficiency, item 8).

torch takes its CPU memory from `malloc`, so the allocator has to be in place before the process starts:
`reexec_with_allocator` re-runs the same command line with `LD_PRELOAD` set (Linux; the `cmeel-mimalloc` wheel),
once, then takes the variables back out of the environment so that subprocesses start on their own allocator.
"""

from __future__ import annotations

import os
import sys
from dataclasses import field
from pathlib import Path

CHOICES = ("auto", "mimalloc", "system")
MIMALLOC_ENV = {"MIMALLOC_PURGE_DELAY": "-1"}  # never hand freed pages back: the next step reuses them
_PRELOAD = "LD_PRELOAD"


def allocator_field():
    """The `allocator` flag of an entry point's arguments dataclass (a YAML key too)."""
    return field(default="auto", metadata={
        "help": "C allocator of this process: mimalloc (keeps freed memory for reuse; on Linux, from the "
                "cmeel-mimalloc wheel; the process re-runs itself with it preloaded), system, or auto (mimalloc "
                "where installed, else system)."})


def mimalloc_library() -> Path | None:
    """libmimalloc's shared object from the installed `cmeel-mimalloc` wheel (None: not installed, or not Linux)."""
    from importlib.metadata import PackageNotFoundError, distribution

    if not sys.platform.startswith("linux"):
        return None
    try:
        files = distribution("cmeel-mimalloc").files or []
    except PackageNotFoundError:
        return None
    found = sorted(f for f in files if f.name.startswith("libmimalloc.so"))
    path = Path(found[0].locate()).resolve() if found else None
    return path if path is not None and path.is_file() else None


def allocator_in_use() -> str:
    """"mimalloc" when libmimalloc is mapped into this process, else "system"."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "mimalloc" if "libmimalloc" in maps else "system"


def allocator_choice(argv: list[str]) -> str:
    """The `allocator` an entry point's command line asks for (`--allocator`, else its `--config` YAML's key, else
    auto), read without the heavy imports, so that re-running on mimalloc does not load torch and TRL twice. A
    config that can't be read here gives auto; the full parser reports it afterwards."""
    import argparse

    import yaml

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--allocator")
    parser.add_argument("--config")
    known, _ = parser.parse_known_args(argv)
    if known.allocator:
        return known.allocator
    try:
        config = yaml.safe_load(Path(known.config).read_text(encoding="utf-8")) if known.config else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        config = None
    value = config.get("allocator") if isinstance(config, dict) else None
    return value if isinstance(value, str) else "auto"


def reexec_with_allocator(choice: str, argv: list[str] | None = None) -> str:
    """Make sure this process runs on `choice`'s allocator; returns the one in use (or does not return).

    With mimalloc chosen (or auto, where it is installed) and not yet loaded, the process replaces itself with
    the same command line (`argv`, default `sys.orig_argv`) and the library preloaded. Call it at the start of an
    entry point only: whatever ran before runs again.
    """
    from .runtime import UserError

    if choice not in CHOICES:
        raise UserError(f"--allocator must be one of {', '.join(CHOICES)}, got {choice!r}")
    in_use, library = allocator_in_use(), mimalloc_library()
    if in_use == "mimalloc":
        _forget_preload(library)
    if choice == "system" or in_use == "mimalloc":
        return in_use
    if library is None:
        if choice == "mimalloc":
            raise UserError("--allocator mimalloc needs Linux and the cmeel-mimalloc package "
                            "(pip install cmeel-mimalloc), or use --allocator system")
        return in_use
    if str(library) in os.environ.get(_PRELOAD, "").split(":"):
        return in_use  # preloaded once already and still not mapped: the loader refused it; don't loop
    env = {**os.environ, **MIMALLOC_ENV, _PRELOAD: ":".join(filter(None, (str(library), os.environ.get(_PRELOAD))))}
    sys.stdout.flush()
    sys.stderr.flush()
    argv = argv or sys.orig_argv
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)
    return in_use  # not reached


def _forget_preload(library: Path | None) -> None:
    """Take the preload out of this process's environment: it stays loaded here, subprocesses choose their own."""
    kept = [p for p in os.environ.get(_PRELOAD, "").split(":") if p and p != str(library)]
    if kept:
        os.environ[_PRELOAD] = ":".join(kept)
    else:
        os.environ.pop(_PRELOAD, None)
    for name, value in MIMALLOC_ENV.items():
        if os.environ.get(name) == value:
            del os.environ[name]


_MI_OPTION_PURGE_DELAY = 15  # mimalloc.h's mi_option_e index, unchanged since mimalloc 2.1


def release_free_memory() -> None:
    """Hand the memory this process has freed back to the OS now, on whichever allocator it runs (a long-lived
    process that pauses, e.g. a benchmark worker waiting for its next round while others run)."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return
    process = ctypes.CDLL(None)
    if allocator_in_use() == "mimalloc":
        process.mi_option_get.restype = ctypes.c_long
        delay = process.mi_option_get(_MI_OPTION_PURGE_DELAY)
        process.mi_option_set(_MI_OPTION_PURGE_DELAY, ctypes.c_long(0))
        process.mi_collect(ctypes.c_bool(True))
        process.mi_option_set(_MI_OPTION_PURGE_DELAY, ctypes.c_long(delay))
    else:
        process.malloc_trim(ctypes.c_size_t(0))
