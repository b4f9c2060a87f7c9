"""IL103 transposed-conv-checkerboard."""

from __future__ import annotations

import itertools
import math

import torch

from initlint.findings import Fix, Issue, Severity
from initlint.graph import ModelGraph
from initlint.ops import ConvParams, Op, OpKind
from initlint.patterns import sig
from initlint.registry import rule


@rule("IL103", "transposed-conv-checkerboard", applies_to={OpKind.CONV}, severity=Severity.WARNING,
      needs_weights=False)
def transposed_conv_checkerboard(op: Op, graph: ModelGraph) -> Issue | None:
    """
    ## What it does
    Finds transposed convolutions whose kernel size is not a multiple of their stride in some dimension
    (counting dilation), so that output pixels of different phases sum different numbers of kernel taps.

    ## Why is this bad?
    A transposed conv with stride s interleaves s^D sub-convolutions, one per output phase. Along a dimension
    with kernel k and stride s, a phase receives ceil(k/s) or floor(k/s) taps; with independent weights its
    variance is proportional to its tap count, so at initialization the output carries a fixed pattern with
    period s: the checkerboard of Odena et al. (2016), present before any training and in every channel.
    A BatchNorm after the conv does not remove it (it normalizes each channel over all positions, phases
    together), so normalization does not lower the severity.

    Measured (ConvTranspose2d, stride 2, max/min phase variance): k = 2, 3, 4, 5 give 1.02, 3.99, 1.01, 2.26,
    the tap-count predictions 1, 4, 1, 2.25 (in 1D: 1, 2, 1, 1.5). DCGAN's kernel 4, stride 2 is free of it;
    the kernel 3, stride 2 with `output_padding=1` of the CycleGAN ResNet generator has a 4x ratio. When the
    kernel is smaller than the stride (or dilation puts every tap on one phase), some phases get no tap at
    all: those outputs are the bias alone, whatever the input and whatever training does, and the finding
    is an error.

    The message gives the taps per phase and per input channel, and the max/min ratio of the phase
    variances they imply; `predicted` also has the ratio computed from the weights themselves.

    ## Example
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(
        nn.ConvTranspose2d(32, 16, kernel_size=3, stride=2, padding=1, output_padding=1), nn.ReLU(),
        nn.Conv2d(16, 3, 3, padding=1),
    )
    example_inputs = torch.randn(2, 32, 8, 8)
    ```

    ## Use instead
    ```python
    import torch
    from torch import nn

    model = nn.Sequential(
        nn.ConvTranspose2d(32, 16, kernel_size=4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 3, 3, padding=1),
    )
    example_inputs = torch.randn(2, 32, 8, 8)
    ```
    Or resize, then convolve: `nn.Upsample(scale_factor=2, mode="nearest")` followed by
    `nn.Conv2d(32, 16, 3, padding=1)` (Odena et al. 2016).

    ## References
    - Odena, Dumoulin & Olah 2016, "Deconvolution and Checkerboard Artifacts", Distill
    - Aitken et al. 2017, "Checkerboard artifact free sub-pixel convolution"
    """
    p, w = op.params, op.weight
    if not isinstance(p, ConvParams) or not p.transposed:
        return None
    dilation = p.dilation if len(p.dilation) == p.dims else p.dilation * p.dims
    per_dim = [_taps_per_residue(k, s, d) for k, s, d in zip(p.kernel_size, p.stride, dilation)]
    if all(min(c) == max(c) for c in per_dim):
        return None
    phases = [math.prod(combo) for combo in itertools.product(*per_dim)]
    taps = sorted(phases, reverse=True)
    dead = sum(1 for t in taps if t == 0)
    ratio = taps[0] / taps[-1] if taps[-1] else math.inf
    shape = "x".join(str(k) for k in p.kernel_size)
    stride = "x".join(str(s) for s in p.stride)
    name = op.module or op.name
    listed = ", ".join(str(t) for t in taps[:-1]) + f" or {taps[-1]}"
    if dead:
        consequence = (f"{dead} of its {len(taps)} output phases get no tap at all and output only the bias "
                       f"({sig(100 * dead / len(taps))}% of pixels)")
    else:
        consequence = f"phase variance ratio {sig(ratio)} (max/min), a checkerboard with period {stride} at init"
    message = (
        f"`{name}` (kernel {shape}, stride {stride}) sums {listed} taps per input channel depending on the output "
        f"pixel's phase: {consequence}"
    )
    predicted = {"phase_taps": tuple(taps), "phase_variance_ratio": ratio, "dead_phases": dead}
    if w is not None and w.tensor is not None:
        predicted["weight_phase_ratio"] = _weight_phase_ratio(w.tensor, per_dim, p.stride, dilation)
    return Issue(message=message, fix=_fix(op, p, dilation), predicted=predicted,
                 severity=Severity.ERROR if dead else None)


def _taps_per_residue(k: int, s: int, d: int) -> list[int]:
    """How many of the k taps (at offsets j*d) land on each of the s output phases."""
    counts = [0] * s
    for j in range(k):
        counts[(j * d) % s] += 1
    return counts


def _weight_phase_ratio(weight: torch.Tensor, per_dim, stride, dilation) -> float:
    """max/min over phases of the weights' energy (sum of squares over taps and channels) per phase."""
    energy = weight.detach().double().square().sum(dim=(0, 1))  # (*kernel)
    sums = []
    for phase in itertools.product(*(range(len(c)) for c in per_dim)):
        index = [
            torch.tensor([j for j in range(energy.shape[i]) if (j * dilation[i]) % stride[i] == phase[i]],
                         dtype=torch.long)
            for i in range(len(phase))
        ]
        sub = energy
        for dim, idx in enumerate(index):
            sub = sub.index_select(dim, idx)
        sums.append(sub.sum().item())
    low = min(sums)
    return max(sums) / low if low > 0 else math.inf


def _fix(op: Op, p: ConvParams, dilation) -> Fix:
    pads = p.padding if isinstance(p.padding, tuple) and len(p.padding) == p.dims else None
    if pads is None and isinstance(p.padding, tuple) and len(p.padding) == 1:
        pads = p.padding * p.dims
    out_pads = p.output_padding if len(p.output_padding) == p.dims else p.output_padding * p.dims
    new = [_same_size(k, s, pd, op_, d) for k, s, pd, op_, d in zip(p.kernel_size, p.stride, pads or (), out_pads,
                                                                     dilation)] if pads else []
    dims = p.dims
    cls = f"nn.ConvTranspose{dims}d"
    if not new or any(n is None for n in new):
        return Fix(
            summary="Upsample, then convolve, so that every output pixel sums the same number of taps",
            code=(f'nn.Sequential(nn.Upsample(scale_factor={_arg(p.stride)}, mode="nearest"),\n'
                  f"              nn.Conv{dims}d({p.in_channels}, {p.out_channels}, kernel_size=3, padding=1))"),
        )
    ks, ps, ops = (tuple(n[i] for n in new) for i in range(3))
    args = f"{p.in_channels}, {p.out_channels}, kernel_size={_arg(ks)}, stride={_arg(p.stride)}, padding={_arg(ps)}"
    if any(ops):
        args += f", output_padding={_arg(ops)}"
    if p.groups != 1:
        args += f", groups={p.groups}"
    if any(d != 1 for d in dilation):
        args += f", dilation={_arg(dilation)}"
    if not p.bias:
        args += ", bias=False"
    size = ""
    if op.shape is not None and len(op.shape) >= dims:
        size = " (" + "x".join(str(s) for s in op.shape[-dims:]) + ")"
    return Fix(
        summary=(f"Use kernel {_arg(ks)} with padding {_arg(ps)}"
                 f"{f' and output_padding {_arg(ops)}' if any(ops) else ''}, a multiple of the stride that keeps "
                 f"the output size{size}"),
        code=f"{cls}({args})  # {op.module or 'this layer'}",
    )


def _same_size(k: int, s: int, pad: int, out_pad: int, d: int) -> tuple[int, int, int] | None:
    """A kernel that is a multiple of the stride, with padding and output padding giving the same output size.

    Output size is (n - 1) s - 2 pad + d (k - 1) + out_pad + 1; keep it for every n.
    """
    if len(set(_taps_per_residue(k, s, d))) == 1:
        return k, pad, out_pad
    up = -(-k // s) * s
    for k2 in (up, up - s):
        if k2 < s or len(set(_taps_per_residue(k2, s, d))) != 1:
            continue
        target = -2 * pad + out_pad - d * (k2 - k)  # = -2 pad' + out_pad'
        for op2 in range(max(s, d)):
            if (op2 - target) % 2 == 0 and op2 - target >= 0:
                return k2, (op2 - target) // 2, op2
    return None


def _arg(values) -> str:
    values = tuple(values)
    return str(values[0]) if len(set(values)) == 1 else str(values)
