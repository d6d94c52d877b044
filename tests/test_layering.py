"""The package's imports run one way (errors -> layers/losses -> architectures -> trainers/plans -> commands) and
form no circle, counting imports inside functions too (the README's layout section states the rule)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nnunet_sparseattn"

# rank of each part; a module may import modules of its own rank or lower. Everything not listed is a command
# (the CLI and what it runs: doctor, discovery, demo, convert-2d, ...), the top rank.
RANKS = {
    "nnunet_sparseattn.errors": 0,
    "nnunet_sparseattn.version": 0,
    "nnunet_sparseattn.outputs": 0,
    "nnunet_sparseattn.layers": 1,
    "nnunet_sparseattn.losses": 1,
    "nnunet_sparseattn.complexity": 1,
    "nnunet_sparseattn.memory": 1,
    "nnunet_sparseattn.model_stamp": 1,
    "nnunet_sparseattn.architectures": 2,
    "nnunet_sparseattn.trainers": 3,
    "nnunet_sparseattn.plans": 3,
}
COMMANDS = 4


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rank(module: str) -> int:
    for prefix, rank in sorted(RANKS.items(), key=lambda item: -len(item[0])):
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return COMMANDS


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Our modules that ``path`` imports anywhere in its body (top level and inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            # the longest of our modules that the target names (a name imported from a module is that module)
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    files = [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, modules) for p in files}


# The package's __init__ (the trainers handed on lazily) ranks with the commands: no module below imports it (the
# version lives in version.py, rank 0), so it needs no exemption here.


def test_no_import_runs_from_a_lower_layer_to_a_higher_one():
    upward = [
        f"{a} (rank {_rank(a)}) imports {b} (rank {_rank(b)})"
        for a, targets in _graph().items()
        for b in targets
        if _rank(b) > _rank(a)
    ]
    assert not upward, "\n".join(upward)


def test_the_imports_form_no_circle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not circles, "\n".join(circles)


def test_the_graph_sees_local_imports():
    # discovery.require_trainer imports the trainers inside its body: the reader must see that arrow
    assert "nnunet_sparseattn.trainers" in _graph()["nnunet_sparseattn.discovery"]


def test_importing_a_network_installs_no_hook_and_a_refusal_does():
    # one interpreter for both (importing torch costs seconds): the import leaves sys.excepthook alone; a refused
    # plans file, uncaught, then prints as one line (nnU-Net's stock trainer on variant plans meets exactly this)
    code = (
        "import sys\nimport nnunet_sparseattn.architectures.bsa, nnunet_sparseattn.architectures.bilateral\n"
        "print(getattr(sys.excepthook, '_nnunet_sparseattn', False))\n"
        "from nnunet_sparseattn.architectures.base import PlansError\n"
        "raise PlansError('stage 2 does not fit: use a smaller region')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False"
    assert result.returncode == 1
    assert result.stderr.strip() == "nnunet-sparseattn: error: stage 2 does not fit: use a smaller region"
