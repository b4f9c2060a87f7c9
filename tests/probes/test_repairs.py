"""The repairs' copy on write: a twin shares the parameters no repair writes, and never writes the model's."""

import torch
from torch import nn

from initlint.probes import repairs


def test_a_twin_shares_untouched_parameters_and_writes_only_its_own():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.BatchNorm1d(8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin = repairs.twin(model)
    assert twin[0].weight is model[0].weight and twin[3].running_mean is not model[3].running_mean
    repairs.reinit_normal(twin, "0.weight", 0.1)
    repairs.scale(twin, "2.weight", 2.0, rows=slice(0, 4))
    repairs.zero(twin, "2.bias")
    repairs.own(twin, twin[3])
    twin[3].reset_parameters()
    twin[3].weight.data.fill_(3.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert twin[0].weight is not model[0].weight and isinstance(twin[0].weight, nn.Parameter)
    assert twin[0].weight.requires_grad
    assert torch.equal(twin[2].weight[4:], model[2].weight[4:])
    assert torch.equal(twin[2].weight[:4], 2 * model[2].weight[:4])
    assert float(twin[2].bias.abs().sum()) == 0.0


def test_tied_weights_stay_tied_in_the_twin():
    a, b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    b.weight = a.weight
    model = nn.Sequential(a, b)
    twin = repairs.twin(model)
    repairs.scale(twin, "0.weight", 0.5)
    assert twin[0].weight is twin[1].weight
    assert torch.equal(twin[1].weight, 0.5 * model[1].weight)


def test_a_recurrent_twin_runs_on_its_repaired_matrix():
    torch.manual_seed(0)
    model = nn.RNN(4, 4, batch_first=True)
    x = torch.randn(2, 3, 4)
    twin = repairs.twin(model)
    repairs.zero(twin, "weight_hh_l0")
    repairs.zero(twin, "weight_ih_l0")
    y, _ = twin(x)
    expected = torch.tanh(twin.bias_ih_l0 + twin.bias_hh_l0).expand_as(y)
    assert torch.allclose(y, expected)
    assert float(model.weight_hh_l0.abs().sum()) > 0.0


class _Custom(nn.Module):
    """A module with a copy protocol of its own, hooks, a non-persistent buffer, a shared submodule and plain
    attributes of several kinds."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.a = nn.Sequential(self.shared, nn.ReLU())
        self.b = self.shared
        self.register_buffer("scratch", torch.ones(3), persistent=False)
        self.config = {"depth": 2, "names": ["x", "y"], "nested": {"k": (1, 2.0)}}
        self.tag = "custom"
        self.a.register_forward_hook(lambda m, i, o: o)

    def forward(self, x):
        return self.b(self.a(x))


class _OwnCopy(nn.Linear):
    copied = 0

    def __deepcopy__(self, memo):
        type(self).copied += 1
        new = nn.Linear(self.in_features, self.out_features)
        new.load_state_dict(self.state_dict())
        memo[id(self)] = new
        return new


def test_twin_copies_modules_as_deepcopy_does():
    """repairs.twin's copier skips copy.deepcopy's general machinery for plain modules: the copy must be the one
    deepcopy makes (types, attributes, hooks, tied submodules, buffers), parameters aside (shared until written)."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(_Custom(), _OwnCopy(4, 4), nn.LSTM(4, 4, batch_first=True))
    reference, twin = copy.deepcopy(model), repairs.twin(model)
    assert _OwnCopy.copied == 2  # its own protocol ran for both copies
    for (n1, m1), (n2, m2) in zip(reference.named_modules(remove_duplicate=False),
                                  twin.named_modules(remove_duplicate=False)):
        assert n1 == n2 and type(m1) is type(m2), (n1, n2)
        plain = {k: v for k, v in vars(m1).items() if not k.startswith("_")}
        assert plain.keys() == {k for k in vars(m2) if not k.startswith("_")}
        for k, v in plain.items():
            if not isinstance(v, (nn.Module, torch.Tensor)):
                assert getattr(m2, k) == v, (n1, k)
        assert len(m1._forward_hooks) == len(m2._forward_hooks)
        assert m1._non_persistent_buffers_set == m2._non_persistent_buffers_set
    custom, original = twin[0], model[0]
    assert custom.b is custom.shared and custom.a[0] is custom.shared  # tied submodules stay tied
    assert custom.shared is not original.shared and custom.config is not original.config
    assert custom.config == original.config and custom.scratch is not original.scratch
    assert torch.equal(custom.scratch, original.scratch)
    assert custom.shared.weight is original.shared.weight  # a parameter no repair wrote is shared
    x = torch.randn(2, 3, 4)
    assert torch.equal(twin[:2](x), reference[:2](x))
