"""Activation checkpointing of the attention blocks, and the count of what a training step keeps for backward.

:func:`checkpoint_blocks` makes every block of the given types run its forward under ``torch.utils.checkpoint``
(non-reentrant): the block keeps only its input for backward and recomputes its inside during backward (outputs
and gradients unchanged; one extra forward of the block per step). It changes no parameter or state-dict key.

:class:`SavedTensorCounter` counts, device-independently, the bytes autograd keeps for backward: every tensor an
op saves (``torch.autograd.graph.saved_tensors_hooks``), one entry per storage (views and repeats share one),
parameters left out (they are counted as parameters). It works on fake tensors
(``torch._subclasses.FakeTensorMode``), so a plan too large for this machine is counted without allocating, and
under autocast, where it counts the low-precision copies autocast saves. Tensors that checkpointing holds for
its recomputation are not saved through the hooks; :func:`checkpoint_blocks`' wrapper reports them to the
active counter, so they are counted too.
"""

from __future__ import annotations

import functools
import types
from contextvars import ContextVar
from typing import Any, Iterable, Iterator, Optional

import torch
import torch.nn as nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils.checkpoint import checkpoint

__all__ = ["SavedTensorCounter", "checkpoint_blocks", "checkpointed_blocks"]

_ACTIVE: ContextVar[Optional["SavedTensorCounter"]] = ContextVar("nnunet_sparseattn_saved_counter", default=None)


class SavedTensorCounter:
    """Bytes kept for backward by what runs inside ``with counter:`` (see the module docstring).

    ``exclude``: tensors not to count (the parameters). ``bytes`` is the total; ``by_dtype`` splits it."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._excluded = {StorageWeakRef(t.untyped_storage()) for t in exclude}
        self._seen: dict[StorageWeakRef, tuple[int, torch.dtype]] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._token: Any = None

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.add(tensor)
        return tensor

    def add(self, tensor: torch.Tensor) -> None:
        """Count ``tensor``'s storage once (a parameter's never)."""
        storage = tensor.untyped_storage()
        key = StorageWeakRef(storage)
        if key not in self._excluded and key not in self._seen:
            # the storage holds the memory: a saved view keeps all of its base alive
            self._seen[key] = (int(storage.nbytes()), tensor.dtype)

    @property
    def bytes(self) -> int:
        return sum(n for n, _ in self._seen.values())

    @property
    def by_dtype(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n, dtype in self._seen.values():
            out[str(dtype).removeprefix("torch.")] = out.get(str(dtype).removeprefix("torch."), 0) + n
        return out

    def __enter__(self) -> "SavedTensorCounter":
        self._hooks.__enter__()
        self._token = _ACTIVE.set(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _ACTIVE.reset(self._token)
        self._hooks.__exit__(*exc)


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    forward = functools.partial(type(self).forward, self)
    if not torch.is_grad_enabled():  # inference: nothing is kept, nothing to recompute
        return forward(*args, **kwargs)
    counter = _ACTIVE.get()
    if counter is not None:  # checkpoint keeps the inputs (by reference) for its recomputation
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor):
                counter.add(value)
    # use_reentrant=False: works with inputs that need no gradient, keyword arguments and torch.compile;
    # determinism_check stays on (it checks the recomputed tensors' shapes and dtypes)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(network: nn.Module, block_types: tuple[type[nn.Module], ...]) -> int:
    """Make every submodule of ``network`` that is an instance of ``block_types`` (the outermost ones only) run its
    forward under activation checkpointing; return how many. Idempotent."""
    count = 0
    for module in _outermost(network, block_types):
        if not getattr(module, "_checkpointed", False):
            # a method bound to the instance shadows the class's forward (nn.Module.__call__ still runs hooks around
            # it); bound, not a closure, so that copy.deepcopy rebinds it to the copy
            module.forward = types.MethodType(_checkpointed_forward, module)
            module._checkpointed = True  # type: ignore[assignment]
        count += 1
    return count


def checkpointed_blocks(network: nn.Module) -> int:
    """How many blocks of ``network`` run under activation checkpointing."""
    return sum(bool(getattr(m, "_checkpointed", False)) for m in network.modules())


def _outermost(network: nn.Module, block_types: tuple[type[nn.Module], ...]) -> Iterator[nn.Module]:
    def walk(module: nn.Module) -> Iterator[nn.Module]:
        for child in module.children():
            if isinstance(child, block_types):
                yield child
            else:
                yield from walk(child)

    if isinstance(network, block_types):
        yield network
        return
    seen: set[int] = set()
    for module in walk(network):  # a block registered under two parents (an alias) is one block
        if id(module) not in seen:
            seen.add(id(module))
            yield module
