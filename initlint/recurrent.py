"""Recurrent layers, step by step: RNN (tanh, ReLU), LSTM and GRU in mean-field form.

Each step sees the input's contribution ``input_size * E[W_ih^2] * q`` plus the previous state scaled by the
recurrent gain: ``rho^2`` for RNNs, with ``rho`` the spectral radius of ``W_hh`` (it is what sets growth over
many steps), else ``hidden * E[W_hh^2]``. Gates are sigmoids of a Gaussian of the pre-activation variance,
so their moments come from :func:`initlint.gains.gate_moments`. Backward runs the same recursion in
reverse through time. Biases are taken to be drawn like ``W_hh`` (PyTorch's default init); the statistics of
``W_ih`` of layers above the first are taken to be those of the first.

>>> from initlint.ops import RecurrentMode, RecurrentParams
>>> out, back = run(RecurrentParams(RecurrentMode.RNN_TANH, 4, 4, seq_len=8), 1.0, 0.25, 0.0, 0.0, [0.0])
>>> round(out, 3)  # no recurrence, no bias: tanh of a unit Gaussian at every step
0.394
"""

from __future__ import annotations

from collections.abc import Sequence

from .estimate import Ctx, Est, Factor, Step
from .gains import activation_gain, gate_gains, gate_moments, tanh_gain, tanh_moments
from .graph import Moments
from .ops import Activation, ActivationParams, Op, RecurrentMode, RecurrentParams

_TANH = ActivationParams(Activation.TANH)
_SIGMOID = ActivationParams(Activation.SIGMOID)
_RELU = ActivationParams(Activation.RELU)


def _g(params: ActivationParams, variance: float):
    if params.fn is Activation.SIGMOID:
        return gate_gains(max(variance, 0.0))[0]
    if params.fn is Activation.TANH:
        return tanh_gain(max(variance, 0.0))
    return activation_gain(params, Moments(max(variance, 0.0)))


def _layer_forward(mode: RecurrentMode, x_in: float, x_unit: float, bias: float, rec: float, steps: int):
    """Per-step statistics of one layer and direction: outputs and what backward needs.

    Biases (and the input's per-unit means) are the same at every step: a cell state that sums them sums
    them coherently. ``a`` tracks how much of the tanh-gate's per-unit offset the cell has accumulated."""
    s_h = u_h = c = a = 0.0
    out, trace = [], []
    for _ in range(steps):
        pre = x_in + bias + rec * s_h
        steady = min(x_unit + bias + rec * u_h, pre)  # the part of ``pre`` that is the same at every step
        if mode in (RecurrentMode.RNN_TANH, RecurrentMode.RNN_RELU):
            g = _g(_TANH if mode is RecurrentMode.RNN_TANH else _RELU, pre)
            trace.append((pre, g.backward))
            s_h, u_h = g.forward.second, g.slope**2 * steady
        elif mode is RecurrentMode.LSTM:  # c' = f c + i g, h = o tanh(c), gates alike in distribution
            # the gates' numbers without Gain records: a step's own arithmetic is what it costs here
            sg2, sg_back, _, th2, th_back, th_slope = gate_moments(max(pre, 0.0))  # the sigmoid's mean is 1/2
            u_g = th_slope**2 * steady
            c_prev = c
            c = sg2 * (c + th2) + 2 * 0.5**2 * a * u_g
            a = 0.5 * (a + 1)
            tc2, tc_slope, tc_back = tanh_moments(max(c, 0.0), False)
            trace.append((sg2, sg_back, th2, th_back, tc2, tc_back, c_prev))
            s_h, u_h = sg2 * tc2, (0.5 * tc_slope * a) ** 2 * u_g
        else:  # GRU: n = tanh(W_in x + r * (W_hn h)), h' = (1 - z) n + z h
            sg = _g(_SIGMOID, pre)
            n = _g(_TANH, x_in + bias + sg.forward.second * rec * s_h)
            u_n = n.slope**2 * min(x_unit + bias + sg.forward.mean**2 * rec * u_h, pre)
            z2, one_minus_z2 = sg.forward.second, 1 - 2 * sg.forward.mean + sg.forward.second
            trace.append((sg, n, s_h))
            cross = 2 * (sg.forward.mean - sg.forward.second) * a * u_n  # E[(1-z) z] m_n m_h
            s_h = one_minus_z2 * n.forward.second + z2 * s_h + cross
            a = (1 - sg.forward.mean) + sg.forward.mean * a
            u_h = a * a * u_n
        out.append(s_h)
    return out, trace


def _layer_backward(mode: RecurrentMode, grads: list[float], trace, rec: float, w_ih2: float, hidden: int):
    """Second moments of the gradient at the layer's input, per step, from those at its outputs."""
    steps = len(grads)
    dx, carry_h, carry_c = [0.0] * steps, 0.0, 0.0
    for t in reversed(range(steps)):
        dh = grads[t] + carry_h
        if mode in (RecurrentMode.RNN_TANH, RecurrentMode.RNN_RELU):
            dpre = dh * trace[t][1]
            carry_h = rec * dpre
            dx[t] = hidden * w_ih2 * dpre
        elif mode is RecurrentMode.LSTM:
            sg2, sg_back, th2, th_back, tc2, tc_back, c_prev = trace[t]
            dc = dh * sg2 * tc_back + carry_c * sg2
            gates = dh * tc2 * sg_back + dc * th2 * sg_back + dc * c_prev * sg_back + dc * sg2 * th_back
            carry_c, carry_h = dc, rec * gates
            dx[t] = hidden * w_ih2 * gates
        else:
            sg, n, s_prev = trace[t]
            one_minus_z2 = 1 - 2 * sg.forward.mean + sg.forward.second
            dn = dh * one_minus_z2 * n.backward
            dz = dh * (s_prev + n.forward.second) * sg.backward
            dr = dn * rec * s_prev * sg.backward
            carry_h = dh * sg.forward.second + rec * (dr + dz + dn * sg.forward.second)
            dx[t] = hidden * w_ih2 * (dr + dz + dn)
    return dx


def run(p: RecurrentParams, x_second: float, w_ih2: float, w_hh2: float, bias2: float, radii: Sequence[float],
        x_unit: float = 0.0):
    """``(output second moment, gradient gain at the input)`` for a unit gradient at every output."""
    steps = max(p.seq_len or 1, 1)
    dirs = 2 if p.bidirectional else 1
    layers, s_in, u_in = [], [x_second] * steps, x_unit
    for layer in range(p.num_layers):
        fan_in = p.input_size if layer == 0 else p.hidden_size * dirs
        idx = layer * dirs
        rec = radii[idx] ** 2 if idx < len(radii) else p.hidden_size * w_hh2
        x_in = fan_in * w_ih2 * (sum(s_in) / steps)
        out, trace = _layer_forward(p.mode, x_in, fan_in * w_ih2 * u_in, bias2, rec, steps)
        layers.append((trace, rec))
        s_in, u_in = out, 0.0
    grads = [1.0] * steps
    for trace, rec in reversed(layers):
        dx = _layer_backward(p.mode, grads, trace, rec, w_ih2, p.hidden_size)
        grads = [dirs * g for g in dx]  # both directions feed the layer below
    return sum(s_in) / steps, sum(grads) / steps


def transfer(op: Op, ins: Sequence[Est], ctx: Ctx) -> Step | None:
    p = op.params
    if op.weight is None or not ins:
        return None
    hidden = p.hidden_weights[0].second_moment if p.hidden_weights else op.weight.second_moment
    seq = p.seq_len or (ins[0].shape[1] if p.batch_first else ins[0].shape[0]) if ins[0].shape else p.seq_len
    params = RecurrentParams(p.mode, p.input_size, p.hidden_size, p.num_layers, p.bidirectional,
                             p.batch_first, seq, p.spectral_radius)
    out, back = run(params, ins[0].second, op.weight.second_moment, hidden, 2 * hidden, p.spectral_radius,
                    ins[0].unit)
    return Step(out, 0.0, grads=(Factor(back),) + (None,) * (len(ins) - 1))


__all__ = ["run", "transfer"]
