"""sparsembed.nn.optim against torch's optimizers: same formulas on dense tensors, SparseAdam's lazy rule on rows."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from sparsembed import optim
from sparsembed.errors import UserError
from sparsembed.nn.hashembedding import HashEmbedding


class Small(nn.Module):
    def __init__(self, sparse: bool) -> None:
        super().__init__()
        self.emb = nn.Embedding(30, 5, sparse=sparse)
        self.lin = nn.Linear(5, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lin(self.emb(ids)).squeeze(-1)


def _steps(model: nn.Module, opt, n: int = 4) -> None:
    for step in range(n):
        g = torch.Generator().manual_seed(step)
        ids = torch.randint(0, 30, (8,), generator=g)
        opt.zero_grad()
        (model(ids) - torch.randn(8, generator=g)).pow(2).mean().backward()
        opt.step()


def _pair(sparse_ours: bool, sparse_theirs: bool) -> tuple[Small, Small]:
    torch.manual_seed(0)
    a = Small(sparse_ours)
    b = Small(sparse_theirs)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (lambda m: optim.SGD(m, lr=0.1), lambda ps: torch.optim.SGD(ps, lr=0.1)),
        (lambda m: optim.Adagrad(m, lr=0.1), lambda ps: torch.optim.Adagrad(ps, lr=0.1)),
    ],
)
def test_sparse_rows_match_torch_on_dense_gradients(ours, theirs) -> None:
    # SGD and Adagrad leave rows with a zero gradient unchanged, so sparse == dense for them.
    a, b = _pair(True, False)
    _steps(a, ours(a))
    _steps(b, theirs(b.parameters()))
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, msg=lambda m, k=k: f"{k}: {m}")


def test_adam_is_sparse_adam_on_rows_and_adam_on_dense() -> None:
    a, b = _pair(True, True)
    _steps(a, optim.Adam(a, lr=0.05))

    class Both:
        def __init__(self) -> None:
            self.s = torch.optim.SparseAdam([b.emb.weight], lr=0.05)
            self.d = torch.optim.Adam(b.lin.parameters(), lr=0.05)

        def zero_grad(self) -> None:
            self.s.zero_grad()
            self.d.zero_grad()

        def step(self) -> None:
            self.s.step()
            self.d.step()

    _steps(b, Both())
    # SparseAdam adds eps before the bias correction, Adam (and we) after: they differ where a moment is tiny.
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


def test_hash_embedding_matches_dense_table_under_adagrad() -> None:
    # The same rows in a HashEmbedding and in an nn.Embedding train identically.
    h = HashEmbedding(3, seed=2)
    keys = torch.tensor([1 << 39, 5, 77])
    e = nn.Embedding(3, 3, sparse=True)
    with torch.no_grad():
        e.weight.copy_(h.lookup(keys))
    oh, oe = optim.Adagrad(h, lr=0.2), optim.Adagrad(e, lr=0.2)
    for step in range(3):
        idx = torch.tensor([[0, 1, 1], [2, 0, 0], [1, 1, 1]][step])
        for mod, opt, ids in ((h, oh, keys[idx]), (e, oe, idx)):
            opt.zero_grad()
            mod(ids).pow(2).sum().backward()
            opt.step()
    torch.testing.assert_close(h.lookup(keys), e.weight.detach())


def test_untouched_rows_and_state_stay_put() -> None:
    h = HashEmbedding(2, seed=0)
    opt = optim.Adam(h, lr=0.1)
    before = h.lookup(torch.tensor([1, 2])).clone()
    for _ in range(2):
        opt.zero_grad()
        h(torch.tensor([1])).sum().backward()
        opt.step()
    after = h.lookup(torch.tensor([1, 2]))
    assert not torch.equal(after[0], before[0])
    assert torch.equal(after[1], before[1])
    slot = h.slots(torch.tensor([2]))
    assert float(h.state_rows("exp_avg")[slot].abs().sum()) == 0.0


def test_rejects_bad_lr() -> None:
    with pytest.raises(UserError):
        optim.SGD(nn.Linear(2, 2), lr=0.0)


OPTIMIZERS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.1),
    "adagrad": lambda ps: optim.Adagrad(ps, lr=0.1),
    "adam": lambda ps: optim.Adam(ps, lr=0.05),
}


@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
@pytest.mark.parametrize("sparse", [True, False])
def test_parameters_as_torch_takes_them_train_as_the_model(kind: str, sparse: bool) -> None:
    # The PyTorch habit: opt = SGD(model.parameters(), lr=0.1). A sparse gradient still updates only its rows.
    make = OPTIMIZERS[kind]
    a, b = _pair(sparse, sparse)
    c = Small(sparse)
    c.load_state_dict(a.state_dict())
    _steps(a, make(a))
    _steps(b, make(b.parameters()))
    _steps(c, make(c.named_parameters()))
    for (k, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values(), strict=True):
        torch.testing.assert_close(y, x, rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")
        torch.testing.assert_close(z, x, rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")


def test_parameters_state_is_named_by_position_or_name() -> None:
    model = Small(True)
    for params, names in ((model.parameters(), {"0", "1", "2"}),
                          (model.named_parameters(), {"emb.weight", "lin.weight", "lin.bias"})):
        opt = optim.Adam(params, lr=0.1)
        _steps(model, opt, n=1)
        assert set(opt.state_dict()["state"]) == names


@pytest.mark.parametrize(
    "given,says",
    [
        (lambda m: m.lin.weight, "a list of parameters ([tensor])"),
        (lambda m: [{"params": list(m.parameters()), "lr": 0.1}], "parameter groups"),
        (lambda m: [m.lin.weight, HashEmbedding(4)], "a HashEmbedding is a module"),
        (lambda m: iter([]), "empty parameter list"),
        (lambda m: [m.lin.weight, 3.0], "parameter 1 is a float"),
        (lambda m: 0.5, "got float"),
    ],
)
def test_what_cannot_be_optimized_says_what_to_pass(given, says: str) -> None:
    with pytest.raises(UserError, match=r"^SGD: .*" + re.escape(says)):
        optim.SGD(given(Small(False)), lr=0.1)
