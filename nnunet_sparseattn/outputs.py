"""Outputs that appear whole or not at all: a folder (or a file) is written under a hidden staging name beside its
target and swapped in by renames at the end (the same file system, so each rename is atomic). Imports nothing of
ours: every rank may use it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["publish_folder", "staging_folder", "write_text_whole"]


def staging_folder(target: Path) -> Path:
    """A fresh, empty hidden folder beside ``target`` (``.NAME.partial``); a leftover of a killed run is removed."""
    staged = target.parent / f".{target.name}.partial"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    return staged


def publish_folder(staged: Path, target: Path) -> Path:
    """Move the complete ``staged`` folder to ``target``, replacing what was there: the old folder is renamed aside
    first and deleted last, so ``target`` is never half-deleted while the new one is missing."""
    replaced = target.parent / f".{target.name}.replaced"
    shutil.rmtree(replaced, ignore_errors=True)
    if target.exists():
        target.rename(replaced)
    staged.rename(target)
    shutil.rmtree(replaced, ignore_errors=True)
    return target


def write_text_whole(target: Path, text: str) -> Path:
    """Write ``text`` to ``target`` through a hidden file beside it, renamed over ``target`` once complete: a reader
    sees the old file or the new one, never half of it."""
    staged = target.parent / f".{target.name}.partial"
    try:
        staged.write_text(text)
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)
    return target
