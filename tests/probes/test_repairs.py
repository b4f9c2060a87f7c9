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
    assert torch.equal(twin[2].weight[4:], model[2].weight[4:]) and torch.equal(twin[2].weight[:4], 2 * model[2].weight[:4])
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
