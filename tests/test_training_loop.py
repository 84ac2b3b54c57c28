"""The training loop's pieces: micro-batches weighted by their share of the global batch,
and an ensemble's accuracy counted on shared and on its members' own images."""

import torch
from torch import nn

from pipeline import models, training


def part_losses(x, y, size: int, chunk: int) -> tuple[list[torch.Tensor], list[int]]:
    """Each micro-batch's weighted loss and its number of images."""
    torch.manual_seed(0)
    trainer = models.MemberLogits(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)))
    members = training.Members(own=False, generators=[torch.Generator()])
    loss_fn = nn.CrossEntropyLoss()
    losses, sizes = [], []
    for xs, ys, share in training.micro_batches([(x, y)], size, chunk, torch.contiguous_format):
        losses.append(members.loss(loss_fn, members.forward(trainer, xs, ys)) * share)
        sizes.append(len(ys[0]))
    return losses, sizes


def test_micro_batches_add_up_to_the_whole_batch_loss():
    data = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 1, 28, 28, generator=data), torch.randint(0, 10, (10,), generator=data)
    (whole,), _ = part_losses(x, y, size=10, chunk=10)
    parts, sizes = part_losses(x, y, size=10, chunk=4)
    assert sizes == [4, 4, 2]
    assert torch.allclose(sum(parts), whole, rtol=1e-6)
    # A rank's part of a global batch of 20 weighs half of it, whatever its micro-batches.
    parts, _ = part_losses(x, y, size=20, chunk=3)
    assert torch.allclose(sum(parts), whole / 2, rtol=1e-6)


def test_an_ensemble_counts_its_summed_logits_on_shared_images_its_members_on_their_own():
    y = torch.tensor([1, 1])
    sure_wrong = torch.tensor([[3.0, 0.0], [0.0, 1.0]])  # (B, classes): reads 0, 1
    unsure_right = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # reads 1, 1
    pairs = [(sure_wrong, y), (unsure_right, y)]
    shared = training.Members(own=False, generators=[torch.Generator()])
    own = training.Members(own=True, generators=[torch.Generator(), torch.Generator()])
    # Summed logits [3, 1] and [0, 2]: the ensemble reads the second image only.
    assert shared.correct(pairs).item() == 1
    # The members read 1 and 2 images right: 1.5 on average.
    assert own.correct(pairs).item() == 1.5
