"""RoutedAttention under DistributedDataParallel (2 CPU processes, gloo), as nnU-Net's -num_gpus runs it:
no find_unused_parameters, so every parameter must get a gradient in every step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from nnunet_sparseattn.layers import RoutedAttention

WORLD = 2


def _net() -> nn.Module:
    torch.manual_seed(0)  # identical initial weights on every rank
    return nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1),
        RoutedAttention(8, 2, (2, 2, 3), 2, conv_op=nn.Conv3d),
        nn.Conv3d(8, 2, 1),
    )


def _batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)  # different data per rank: the all-reduce matters
    return torch.randn(2, 1, 5, 6, 7, generator=g), torch.randint(0, 2, (2, 5, 6, 7), generator=g)


def _worker(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    # A file store, not TCP: with TCP, rank 0 hosts the store and, exiting first, could pull it from under rank 1's
    # teardown (seen once in CI: rank 1 aborted with "terminate called without an active exception").
    store = Path(out_dir) / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        model = nn.parallel.DistributedDataParallel(_net())  # find_unused_parameters=False, like nnU-Net
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = _batch(rank)
        grads = None
        for step in range(2):  # a missing gradient makes DDP fail at the second step's forward
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            if step == 0:
                grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in model.module.named_parameters()}
            opt.step()
        torch.save(grads, Path(out_dir) / f"grads{rank}.pt")
        dist.barrier()  # no rank tears down while another still talks to it
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_training_step_two_cpu_processes(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    g0 = torch.load(tmp_path / "grads0.pt")
    g1 = torch.load(tmp_path / "grads1.pt")
    assert g0.keys() == g1.keys() and len(g0) == len(list(_net().parameters()))
    # single-process reference: DDP's gradient is the mean of the per-rank gradients
    ref = _net()
    ref_grads = {n: torch.zeros_like(p) for n, p in ref.named_parameters()}
    for rank in range(WORLD):
        ref.zero_grad()
        x, y = _batch(rank)
        nn.functional.cross_entropy(ref(x), y).backward()
        for n, p in ref.named_parameters():
            ref_grads[n] += p.grad / WORLD
    for n in g0:
        assert g0[n] is not None and g1[n] is not None, f"{n} got no gradient"
        assert g0[n].abs().sum() > 0, f"{n} got a zero gradient"
        torch.testing.assert_close(g0[n], g1[n], rtol=0, atol=0)  # both ranks agree exactly
        torch.testing.assert_close(g0[n], ref_grads[n], rtol=1e-5, atol=1e-6)
