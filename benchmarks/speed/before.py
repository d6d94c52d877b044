"""``--before``: our networks as another commit builds them, timed by a worker process in the same rounds as this
checkout's (``benchmarks/network_speed.py --before GIT_REF``).

The worker is this checkout's benchmark code on the other commit's package. ``git archive`` exports only that
commit's package (``nnunet_sparseattn`` and the startup hook's module beside it) into a temporary folder; the worker
(``python -m benchmarks.network_speed --worker``) starts in that folder, with that folder and then this checkout on
``PYTHONPATH``. Python puts the working folder first on ``sys.path`` for ``-m`` (and ``PYTHONPATH`` keeps it first
under ``PYTHONSAFEPATH``), so ``nnunet_sparseattn`` is imported from the export, while ``benchmarks`` (not exported)
comes from this checkout. No code edits ``sys.path``; the worker checks which package it got before it measures.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import ROOT
from benchmarks.speed.measure import Runner, Settings, failure, load_plan, tiny_plan

TREE_VARIABLE = "NNUNET_SPARSEATTN_BENCH_TREE"  # the export the worker must import the package from
# What the worker needs of the other commit (the hook's module did not exist in the oldest commits)
EXPORTED = ("nnunet_sparseattn", "nnunet_sparseattn_autodiscovery.py")


class BeforeTree:
    """The networks as another commit builds them, timed by a worker process between this run's own measurements.

    The worker reads JSON requests on its stdin and answers one JSON line each on its stdout. Both processes wait
    on each other, so only one of them runs at a time. Nothing of this checkout is touched.
    """

    def __init__(self, ref: str, threads: int) -> None:
        self.ref = ref
        self.commit = _git("rev-parse", ref).decode().strip()
        self.folder = Path(tempfile.mkdtemp(prefix="network-speed-before-"))
        listed = set(_git("ls-tree", "--name-only", self.commit).decode().split())
        archive = _git("archive", "--format=tar", self.commit, *[p for p in EXPORTED if p in listed])
        subprocess.run(["tar", "-x", "-C", str(self.folder)], input=archive, check=True)
        path = [str(self.folder), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), **{TREE_VARIABLE: str(self.folder)})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.network_speed", "--worker", "--threads", str(threads)],
            cwd=self.folder,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            bufsize=1,
        )

    def call(self, **request: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the --before worker ({self.ref}) exited (code {self.process.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]

    def runner(self, key: str, plan_name: str, settings: Settings) -> RemoteRunner:
        return RemoteRunner(self, key, plan_name, settings)

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.call(op="quit")
            self.process.wait(timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True).stdout


class RemoteRunner:
    """A :class:`Runner` in the ``--before`` worker."""

    def __init__(self, tree: BeforeTree, key: str, plan_name: str, settings: Settings) -> None:
        self.tree, self.key = tree, key
        self.spec = {
            "key": key,
            "plan": plan_name,
            "tiny": settings.tiny,
            "batch": settings.batch,
            "device": str(settings.device),
            "mode": settings.mode,
            "compile_backend": settings.compile_backend,
        }

    def setup(self) -> dict[str, Any]:
        # FLOPs are counted in this tree (the worker's package may predate the counter): see measure_plan
        result: dict[str, Any] = self.tree.call(op="setup", **self.spec)
        return result

    def time(self, steps: int) -> tuple[float, float, list[float]]:
        wall, cpu, losses = self.tree.call(op="time", key=self.key, steps=steps)
        return wall, cpu, losses

    def close(self) -> None:
        self.tree.call(op="close", key=self.key)


def worker() -> None:
    """``--worker``: Runners on this process's package, driven by JSON requests on stdin (see :class:`BeforeTree`)."""
    import nnunet_sparseattn

    protocol, sys.stdout = sys.stdout, sys.stderr  # prints go to stderr; stdout carries the replies only
    tree = os.environ.get(TREE_VARIABLE, "")
    runners: dict[str, Runner] = {}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if not str(Path(nnunet_sparseattn.__file__).resolve()).startswith(str(Path(tree).resolve())):
                raise RuntimeError(f"the worker imported {nnunet_sparseattn.__file__}, not the package in {tree}")
            op = request.pop("op")
            if op == "quit":
                break
            reply: dict[str, Any] = {"result": _serve(op, request, runners)}
        except Exception as error:
            reply = {"error": failure(error)}
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()


def _serve(op: str, request: dict[str, Any], runners: dict[str, Runner]) -> Any:
    """One worker request: set a network up, time it, or close it."""
    if op == "setup":
        plan = load_plan(request["plan"])
        plan = tiny_plan(plan) if request["tiny"] else plan
        runner = Runner(
            request["key"],
            plan,
            request["batch"],
            torch.device(request["device"]),
            request["mode"],
            request["compile_backend"],
        )
        result = runner.setup(count_flops=False)
        runners[request["key"]] = runner
        return result
    if op == "time":
        return runners[request["key"]].time(request["steps"])
    if op == "close":
        runners.pop(request["key"]).close()
        gc.collect()
        return None
    raise ValueError(f"unknown request {op!r}")
