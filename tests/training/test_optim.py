import torch

from deltatune.config import TrainConfig
from deltatune.training.optim import add_l1_gradient, build_optimizer, decay_parameter_groups


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)


def test_no_weight_decay_on_biases_and_layernorm():
    net = Net()
    groups = decay_parameter_groups(net, 0.1)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(net.lin.weight)}
    assert sum(len(g["params"]) for g in groups) == 4


def test_adamw_weight_decay_leaves_bias_alone():
    net = Net()
    opt = build_optimizer(net, TrainConfig(learning_rate=0.1, weight_decay=0.5))
    before_w, before_b = net.lin.weight.detach().clone(), net.lin.bias.detach().clone()
    for p in net.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only decay can move a weight
    opt.step()
    assert torch.allclose(net.lin.weight, before_w * (1 - 0.1 * 0.5))
    assert torch.equal(net.lin.bias, before_b)


def test_l1_gradient_is_lambda_times_sign():
    w = torch.nn.Parameter(torch.tensor([[1.5, -2.0], [0.0, 3.0]]))
    w.grad = torch.ones_like(w)
    add_l1_gradient([w], 0.1)
    assert torch.allclose(w.grad, torch.tensor([[1.1, 0.9], [1.0, 1.1]]))


def test_adafactor_and_sgd_reduce_a_quadratic():
    for name in ("adafactor", "sgd"):
        torch.manual_seed(0)
        w = torch.nn.Linear(8, 8, bias=False)
        opt = build_optimizer(w, TrainConfig(optimizer=name, learning_rate=0.05, weight_decay=0.0))
        x = torch.randn(32, 8)
        first = None
        for _ in range(30):
            loss = (w(x) ** 2).mean()
            first = first if first is not None else loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert loss.item() < 0.5 * first, name
