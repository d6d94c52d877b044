"""One-line errors for mistakes a user can fix. Imports nothing of ours, so every layer may raise them."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Callable, Optional, Union

__all__ = ["UserError", "check_output_path", "install_user_error_hook", "reading", "refuse_inside"]

ExceptHook = Callable[[type[BaseException], BaseException, Optional[TracebackType]], object]


class UserError(Exception):
    """A mistake the user can fix; printed as one line (``nnunet-sparseattn: error: ...``), without a traceback."""


def _last_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[-1].strip() if text else type(error).__name__


@contextlib.contextmanager
def reading(path: Union[str, os.PathLike], what: str = "file", reader: str = "") -> Iterator[None]:
    """Turn any failure of a library to read ``path`` into one line naming the file (the one place that does).

    Image readers raise anything (SimpleITK's RuntimeError with a C++ trace, PIL's UnidentifiedImageError, nibabel's
    ImageFileError, numpy's ValueError on a truncated file, OSError); the user needs the file's name and the reader's
    last word on it. ``UserError`` passes through; ``KeyboardInterrupt`` is no ``Exception`` and passes too.
    """
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        how = f" with {reader}" if reader else ""
        size = os.path.getsize(path) if os.path.isfile(path) else None
        empty = " (it is empty: 0 bytes)" if size == 0 else ""
        raise UserError(f"cannot read {what} {path}{how}{empty}: {_last_line(error)}") from None


def check_output_path(path: Union[str, os.PathLike], flag: str, kind: str = "folder") -> None:
    """Refuse, before any work, an output the command could not write at the end: a ``kind`` ("folder" or "file")
    path that is the other kind, or whose nearest existing parent is a file or not writable."""
    path = os.path.abspath(os.path.expanduser(path))
    if kind == "folder" and os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} is a file: give a folder (new, or one of this command's earlier outputs)")
    if kind == "file" and os.path.isdir(path):
        raise UserError(f"{flag} {path} is a folder: give the path of the file to write")
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder")
    if parent and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {parent} is not writable by you; choose a folder you can write")


def refuse_inside(
    output: Union[str, os.PathLike],
    inputs: Mapping[str, Union[str, os.PathLike]],
    flag: str,
    fix: str = "write outputs elsewhere, never into inputs",
) -> None:
    """Refuse an output that is one of the command's input folders or lies inside one (it would write into them)."""
    out = os.path.realpath(os.path.expanduser(output))
    for name, folder in inputs.items():
        inside = os.path.realpath(os.path.expanduser(folder))
        if out == inside or out.startswith(inside.rstrip(os.sep) + os.sep):
            where = "is" if out == inside else "lies inside"
            raise UserError(f"{flag} {output} {where} the {name} {folder}: {fix}")


def _print_user_errors(previous_hook: ExceptHook) -> ExceptHook:
    def hook(exc_type: type[BaseException], exc: BaseException, tb: Optional[TracebackType]) -> None:
        if issubclass(exc_type, UserError):
            # inside nnU-Net's own commands (nnUNetv2_train, ...): our message, one line, no traceback
            print(f"nnunet-sparseattn: error: {exc}", file=sys.stderr)
            return
        previous_hook(exc_type, exc, tb)

    hook._nnunet_sparseattn = True  # type: ignore[attr-defined]
    return hook


def install_user_error_hook() -> None:
    """Make an uncaught :class:`UserError` print as one line in this process (idempotent).

    Our code runs inside nnU-Net's commands, which print tracebacks. Entry points install this hook (our CLI, the
    trainer shim) and so does a refusal raised where no entry point of ours ran (a network refusing its plans under
    nnU-Net's stock trainer); importing a module never does. Every other exception keeps the previous behaviour.
    """
    if not getattr(sys.excepthook, "_nnunet_sparseattn", False):
        sys.excepthook = _print_user_errors(sys.excepthook)
