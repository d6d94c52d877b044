"""One-line errors for mistakes a user can fix. Imports nothing of ours, so every layer may raise them."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Callable, Optional

__all__ = ["UserError", "install_user_error_hook"]

ExceptHook = Callable[[type[BaseException], BaseException, Optional[TracebackType]], object]


class UserError(Exception):
    """A mistake the user can fix; printed as one line (``nnunet-sparseattn: error: ...``), without a traceback."""


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
