"""Small torch models and comparisons for the tests of the ``EMA`` class."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 2)
    )


def two_groups():
    """float32 and float64 tensors (two fused lerp groups) and a BatchNorm's integer counter."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    model[1].double()
    return model


def nudge(model, k):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.125 * k)


def copies(ema):
    return {n: t.clone() for n, t in ema.average.items()}


def same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


def live_values(model):
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


class TiedEmbedding(torch.nn.Module):
    """An embedding and an output layer sharing one weight (tracked once, as ``emb.weight``)."""

    def __init__(self, vocab: int = 3, width: int = 2) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, width)
        self.out = torch.nn.Linear(width, vocab, bias=False)
        self.out.weight = self.emb.weight
