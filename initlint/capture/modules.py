"""Handlers for the ``torch.nn`` modules the fx tracer keeps as leaves (and the hooks capture sees), by type.

Each handler reads the module's attributes and returns an :class:`~initlint.capture.normalize.OpSpec`.
Importing this module fills :data:`~initlint.capture.normalize.MODULES`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..ops import (
    Activation,
    ActivationParams,
    DropoutParams,
    EmbeddingParams,
    LinearParams,
    NormKind,
    NormParams,
    OpKind,
    PoolKind,
    PoolParams,
    RecurrentMode,
    RecurrentParams,
    SoftmaxParams,
    WeightStats,
)
from .normalize import MODULES, Call, OpSpec, Ref, _bias, _module, _rms, _tup, conv_params_and_weight, linear_weight


def _p(module: nn.Module, path: str, attr: str) -> tuple[str, torch.Tensor] | None:
    params = module._parameters  # a registered parameter is what getattr finds, without nn.Module's __getattr__
    t = params[attr] if attr in params else getattr(module, attr, None)
    if not isinstance(t, torch.Tensor):
        return None
    return (f"{path}.{attr}" if path else attr), t


@_module(nn.Linear)
def _m_linear(m: nn.Linear, path: str, c: Call):
    w = _p(m, path, "weight")
    b = _p(m, path, "bias")
    return OpSpec(OpKind.LINEAR, (c.arg(0),), LinearParams(m.in_features, m.out_features, b is not None),
                  linear_weight(*w), _bias(*b) if b else None)


@_module(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _m_conv(m, path: str, c: Call):
    w, b = _p(m, path, "weight"), _p(m, path, "bias")
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    params, stats = conv_params_and_weight(w[0], w[1], m.stride, m.padding, m.dilation, m.groups, transposed,
                                           m.output_padding if transposed else 0, b is not None)
    return OpSpec(OpKind.CONV, (c.arg(0),), params, stats, _bias(*b) if b else None)


@_module(nn.Embedding)
def _m_embedding(m: nn.Embedding, path: str, c: Call):
    w = _p(m, path, "weight")
    return OpSpec(OpKind.EMBEDDING, (c.arg(0),), EmbeddingParams(m.num_embeddings, m.embedding_dim, m.padding_idx),
                  WeightStats.of(*w, 1, 1))


def _m_norm(kind: NormKind):
    def handler(m, path: str, c: Call):
        w, b = _p(m, path, "weight"), _p(m, path, "bias")
        extra: dict[str, Any] = {}
        if kind is NormKind.BATCH:
            extra["uses_batch_stats"] = m.training or not m.track_running_stats
            extra["num_features"] = m.num_features
        elif kind is NormKind.INSTANCE:
            extra["num_features"] = m.num_features
        elif kind is NormKind.GROUP:
            extra.update(num_groups=m.num_groups, num_features=m.num_channels)
        elif kind in (NormKind.LAYER, NormKind.RMS):
            shape = tuple(m.normalized_shape)
            extra.update(normalized_shape=shape, num_features=shape[-1])
        w_stats, b_stats = WeightStats.of(*w, 1, 1) if w else None, _bias(*b) if b else None
        params = NormParams(kind, eps=float(m.eps if getattr(m, "eps", None) is not None else 1e-5),
                            affine=w is not None, weight_rms=_rms(w[1], w_stats) if w else 1.0,
                            bias_rms=_rms(b[1], b_stats) if b else 0.0, **extra)
        return OpSpec(OpKind.NORM, (c.arg(0),), params, w_stats, b_stats)

    return handler


MODULES.update({t: _m_norm(NormKind.BATCH) for t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)})
MODULES.update({t: _m_norm(NormKind.INSTANCE) for t in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)})
MODULES[nn.LayerNorm] = _m_norm(NormKind.LAYER)
MODULES[nn.GroupNorm] = _m_norm(NormKind.GROUP)
if hasattr(nn, "RMSNorm"):
    MODULES[nn.RMSNorm] = _m_norm(NormKind.RMS)


def _m_act(fn: Activation, **read: str):
    def handler(m, path: str, c: Call):
        extra = {k: float(getattr(m, attr)) for k, attr in read.items()}
        if fn is Activation.GELU:
            extra = {"approximate": None if m.approximate == "none" else m.approximate}
        return OpSpec(OpKind.ACTIVATION, (c.arg(0),), ActivationParams(fn, **extra))

    return handler


MODULES.update({
    nn.ReLU: _m_act(Activation.RELU), nn.ReLU6: _m_act(Activation.RELU6),
    nn.LeakyReLU: _m_act(Activation.LEAKY_RELU, negative_slope="negative_slope"),
    nn.ELU: _m_act(Activation.ELU, alpha="alpha"), nn.CELU: _m_act(Activation.CELU, alpha="alpha"),
    nn.SELU: _m_act(Activation.SELU), nn.GELU: _m_act(Activation.GELU), nn.SiLU: _m_act(Activation.SILU),
    nn.Mish: _m_act(Activation.MISH), nn.Softplus: _m_act(Activation.SOFTPLUS, beta="beta", threshold="threshold"),
    nn.Tanh: _m_act(Activation.TANH), nn.Sigmoid: _m_act(Activation.SIGMOID),
    nn.Hardtanh: _m_act(Activation.HARDTANH, min_val="min_val", max_val="max_val"),
    nn.Hardsigmoid: _m_act(Activation.HARDSIGMOID), nn.Hardswish: _m_act(Activation.HARDSWISH),
    nn.Softsign: _m_act(Activation.SOFTSIGN), nn.Tanhshrink: _m_act(Activation.TANHSHRINK),
    nn.LogSigmoid: _m_act(Activation.LOGSIGMOID), nn.RReLU: _m_act(Activation.RRELU),
})


@_module(nn.PReLU)
def _m_prelu(m: nn.PReLU, path: str, c: Call):
    slope = m.weight.detach().float().mean().item() if not m.weight.is_meta else 0.25
    return OpSpec(OpKind.ACTIVATION, (c.arg(0),), ActivationParams(Activation.PRELU, negative_slope=slope))


@_module(nn.Identity, nn.Flatten, nn.Unflatten, nn.Upsample, nn.PixelShuffle, nn.PixelUnshuffle, nn.ZeroPad2d,
         nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d,
         nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ChannelShuffle)
def _m_passthrough(m, path: str, c: Call):
    return OpSpec(OpKind.PASSTHROUGH, (c.arg(0),))


@_module(nn.Softmax, nn.LogSoftmax, nn.Softmax2d)
def _m_softmax(m, path: str, c: Call):
    dim = getattr(m, "dim", -3)
    return OpSpec(OpKind.SOFTMAX, (c.arg(0),),
                  SoftmaxParams(dim if dim is not None else -1, log=isinstance(m, nn.LogSoftmax)))


@_module(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
def _m_dropout(m, path: str, c: Call):
    return OpSpec(OpKind.DROPOUT, (c.arg(0),), DropoutParams(float(m.p), True, m.training))


def _m_pool(kind: PoolKind):
    def handler(m, path: str, c: Call):
        if kind in (PoolKind.ADAPTIVE_AVG, PoolKind.ADAPTIVE_MAX):
            size = m.output_size
            return OpSpec(OpKind.POOL, (c.arg(0),),
                          PoolParams(kind, output_size=_tup(size) if size is not None else ()))
        k = _tup(m.kernel_size)
        return OpSpec(OpKind.POOL, (c.arg(0),), PoolParams(kind, k, _tup(m.stride) if m.stride else k))

    return handler


MODULES.update({t: _m_pool(PoolKind.MAX) for t in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)})
MODULES.update({t: _m_pool(PoolKind.AVG) for t in (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)})
MODULES.update({t: _m_pool(PoolKind.ADAPTIVE_AVG)
                for t in (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)})
MODULES.update({t: _m_pool(PoolKind.ADAPTIVE_MAX)
                for t in (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)})


@_module(nn.RNN, nn.LSTM, nn.GRU)
def _m_recurrent(m: nn.RNNBase, path: str, c: Call):
    mode = {"RNN_TANH": RecurrentMode.RNN_TANH, "RNN_RELU": RecurrentMode.RNN_RELU,
            "LSTM": RecurrentMode.LSTM, "GRU": RecurrentMode.GRU}[m.mode]
    x = c.arg(0)
    seq = None
    if isinstance(x, Ref) and x.shape and len(x.shape) >= 2:
        seq = x.shape[1] if m.batch_first and len(x.shape) == 3 else x.shape[0]
    radii, hidden = [], []
    for name in m._flat_weights_names:
        if name.startswith("weight_hh"):
            w = getattr(m, name)
            hidden.append(WeightStats.of(f"{path}.{name}" if path else name, w, m.hidden_size, m.hidden_size))
            if mode in (RecurrentMode.RNN_TANH, RecurrentMode.RNN_RELU) and not w.is_meta:
                radii.append(spectral_radius(w))
    first = _p(m, path, "weight_ih_l0")
    gates = first[1].shape[0] // m.hidden_size
    params = RecurrentParams(mode, m.input_size, m.hidden_size, m.num_layers, m.bidirectional, m.batch_first, seq,
                             tuple(radii), tuple(hidden))
    stats = WeightStats.of(*first, m.input_size, first[1].shape[0] // gates)
    return OpSpec(OpKind.RECURRENT, (x,) if isinstance(x, Ref) else (), params, stats)


def spectral_radius(w: torch.Tensor) -> float:
    """Largest |eigenvalue| of a square matrix."""
    with torch.no_grad():
        return torch.linalg.eigvals(w.detach().double().cpu()).abs().max().item()
