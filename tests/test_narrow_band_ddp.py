"""The narrow-band loss with batch Dice under DistributedDataParallel (2 CPU processes, gloo), as nnU-Net's
``-num_gpus`` runs it: with ``ddp`` its band sums are gathered over the ranks (nnU-Net's ``AllGatherGrad``, as its
Dice loss does), so each rank's loss and the averaged gradients are those of one process on the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from nnunet_sparseattn.losses import NarrowBandLoss

WORLD = 2
RADIUS = (1, 2, 1)


def _net() -> nn.Module:
    torch.manual_seed(0)  # identical initial weights on every rank
    return nn.Conv3d(1, 3, 3, padding=1)


def _batch(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(200 + rank)  # different data per rank
    x = torch.randn(2, 1, 6, 7, 5, generator=g)
    labels = torch.zeros(2, 1, 6, 7, 5)
    labels[:, :, 1:4, 2:6, 1:4] = 1.0
    labels[:, :, 3:5, 1:3, 2:5] = 2.0
    if rank == 1:
        labels[1] = 0.0  # one sample without foreground: its classes have no band on this rank alone
    return x, labels


def _step(model: nn.Module, loss_fn: NarrowBandLoss, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    grads = {}
    for name, p in module.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        grads[name] = p.grad.clone()
    return loss.item(), grads


def _worker(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    store = Path(out_dir) / "store"  # a file store: no rank can pull it from under another's teardown
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        model = nn.parallel.DistributedDataParallel(_net())  # averages the gradients over the ranks
        x, y = _batch(rank)
        results = {}
        for ddp in (True, False):
            results[ddp] = _step(model, NarrowBandLoss(RADIUS, batch_dice=True, ddp=ddp), x, y)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: ~10-30 s on 2 shared cores
def test_batch_dice_nb_loss_under_ddp_equals_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    batches = [_batch(r) for r in range(WORLD)]
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    ref_loss, ref_grads = _step(_net(), NarrowBandLoss(RADIUS, batch_dice=True), x, y)
    for loss, grads in (r[True] for r in ranks):
        assert abs(loss - ref_loss) < 1e-6  # every rank computes the whole batch's loss
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name], rtol=1e-5, atol=1e-7)
    # without the gather each rank's loss is its own half's, and the averaged gradient differs: the test can fail
    own = [r[False][0] for r in ranks]
    assert all(abs(loss - ref_loss) > 1e-4 for loss in own)
    assert not torch.allclose(ranks[0][False][1]["weight"], ref_grads["weight"], rtol=1e-3, atol=1e-6)


def test_the_nb_trainer_hands_ddp_to_its_nb_losses_as_nnunet_hands_it_to_its_dice(trainer_without_data):
    import json

    from nnunet_sparseattn.trainers import nnUNetTrainerNB

    record = json.loads((Path(__file__).parents[1] / "benchmarks" / "plans" / "isic2017_2d.json").read_text())
    trainer = trainer_without_data(nnUNetTrainerNB, record["plans"], "2d", record["dataset_json"], initialize=False)
    for is_ddp in (False, True):
        trainer.is_ddp = is_ddp  # what nnU-Net sets when a process group is up (-num_gpus > 1)
        loss = trainer._build_loss()
        dice = loss.base_loss.loss.dc
        assert dice.ddp is is_ddp and dice.batch_dice  # nnU-Net's own Dice: ISIC's 2d plans use batch Dice
        assert [nb.ddp for nb in loss.nb_losses] == [is_ddp] * len(loss.nb_losses)
        assert all(nb.batch_dice for nb in loss.nb_losses)
