"""nnU-Net's companion for sparse-attention segmentation: check the setup (doctor), write variant plans (plan),
count networks (info), convert 2D datasets (convert-2d), score predictions (evaluate), compare trainers (compare),
explain a prediction (explain), export a model (export) and run the demo (demo)."""

from __future__ import annotations

import argparse
import errno
import importlib
import shlex
import signal
import sys
import threading

from nnunet_sparseattn.discovery import silence_torch_jit_warning
from nnunet_sparseattn.errors import UserError, install_user_error_hook

# the subcommands in the order ``--help`` lists them, each added by its own module's ``add_parser`` (light modules:
# what a command runs is imported only when it runs, so ``--help`` does not import torch)
COMMANDS = (
    "nnunet_sparseattn.discovery",  # ext-path
    "nnunet_sparseattn.doctor",
    "nnunet_sparseattn.plan",
    "nnunet_sparseattn.info",
    "nnunet_sparseattn.compare.command",
    "nnunet_sparseattn.convert2d",  # convert-2d
    "nnunet_sparseattn.export",
    "nnunet_sparseattn.evaluation.command",  # evaluate
    "nnunet_sparseattn.explain.command",
    "nnunet_sparseattn.demo.command",  # make-demo-dataset, demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-sparseattn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(name).add_parser(commands)
    return parser


def _terminated(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C: every ``finally`` runs, so staged outputs (``.NAME.partial``) are removed
    raise SystemExit(128 + signum)


def _os_error_line(error: OSError) -> str:
    """A file-system failure (permission, disk full, a file where a folder must be) as one line naming the path."""
    where = f"{error.filename}" + (f" -> {error.filename2}" if error.filename2 else "")
    fix = {
        errno.EACCES: "choose a path you may write, or fix its permissions",
        errno.EPERM: "choose a path you may write, or fix its permissions",
        errno.ENOSPC: "free some space or write elsewhere",
        errno.EROFS: "the file system is read-only: write elsewhere",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "it is a folder; give a file",
        errno.EEXIST: "it exists already; give a new path",
    }.get(error.errno or 0, "check the path")
    return f"{where}: {error.strerror or error}: {fix}"


def main(argv: list[str] | None = None) -> int:
    install_user_error_hook()  # refusals raised where this function does not catch them (e.g. at exit)
    silence_torch_jit_warning()  # it used to precede doctor's, explain's and compare's output
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["nnunet-sparseattn", *(sys.argv[1:] if argv is None else argv)])
    in_main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main_thread else None
    try:
        return args.func(args)
    except UserError as error:
        print(f"nnunet-sparseattn: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.filename is None:  # no path to name: not a user's file-system mistake, keep the traceback
            raise
        print(f"nnunet-sparseattn: error: {_os_error_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
