"""Example inputs: given, from shapes, from the model, or inferred from the first layer that consumes them.

Inputs are drawn from a private generator seeded with 0, so runs repeat and the global RNG is untouched.

>>> from torch import nn
>>> ex = infer(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()))
>>> tuple(ex.args[0].shape)
(2, 3, 32, 32)
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import InputsError

BATCH = 2  # a batch of two: enough for BatchNorm's batch statistics, cheap everywhere
SEQ_LEN = 16
IMAGE_SIZE = 32
_DTYPES = {
    "float32": torch.float32, "float": torch.float32, "float64": torch.float64, "double": torch.float64,
    "float16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "long": torch.int64, "int32": torch.int32, "int": torch.int32, "bool": torch.bool,
}


@dataclass(frozen=True)
class ExampleInputs:
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    source: str = "given"  # given | factory | shapes | model | transformers | inferred

    def describe(self) -> str:
        def one(v):
            return f"{tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}" if isinstance(v, torch.Tensor) else repr(v)

        parts = [one(a) for a in self.args] + [f"{k}={one(v)}" for k, v in self.kwargs.items()]
        return ", ".join(parts)


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def parse_dtype(text: str) -> torch.dtype:
    try:
        return _DTYPES[text.removeprefix("torch.")]
    except KeyError:
        raise InputsError(f"unknown input dtype `{text}`", help=f"use one of: {', '.join(_DTYPES)}") from None


def coerce(value, source: str = "given") -> ExampleInputs:
    """Accept what users pass: a tensor, a tuple or list of them, a dict of keyword inputs, or ExampleInputs."""
    if isinstance(value, ExampleInputs):
        return value
    if isinstance(value, torch.Tensor):
        return ExampleInputs((value,), {}, source)
    if isinstance(value, Mapping):
        return ExampleInputs((), dict(value), source)
    if isinstance(value, (tuple, list)):
        return ExampleInputs(tuple(value), {}, source)
    raise InputsError("example inputs must be a tensor, a tuple of tensors or a dict",
                      why=f"got {type(value).__name__}")


def from_shapes(model: nn.Module, shapes: Sequence[Sequence[int]], dtypes: Sequence[str] = ()) -> ExampleInputs:
    gen, args = _gen(), []
    for i, shape in enumerate(shapes):
        dtype = parse_dtype(dtypes[min(i, len(dtypes) - 1)]) if dtypes else torch.float32
        if dtype.is_floating_point:
            args.append(torch.randn(tuple(shape), generator=gen).to(dtype))
        else:
            high = next((m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)), 2)
            args.append(torch.randint(0, high, tuple(shape), generator=gen).to(dtype))
    return ExampleInputs(tuple(args), {}, "shapes")


def choose(model: nn.Module, given=None, shapes=None, dtypes=None, where: str = "the model") -> ExampleInputs:
    """In order: ``given`` (the factory's or the caller's), shapes, the model's own, transformers, inferred.

    Inputs initlint makes are put on the model's device (``meta`` included: a model too large to materialize is
    linted structurally).
    """
    made = _choose(model, given, shapes, dtypes, where)
    device = next((p.device for p in model.parameters()), None)
    if device is None or device.type == "cpu" or made.source in ("given", "model"):
        return made
    move = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v  # noqa: E731
    return ExampleInputs(tuple(move(a) for a in made.args), {k: move(v) for k, v in made.kwargs.items()}, made.source)


def _choose(model: nn.Module, given, shapes, dtypes, where: str) -> ExampleInputs:
    if given is not None:
        return coerce(given)
    if shapes:
        return from_shapes(model, shapes, list(dtypes or ()))
    own = getattr(model, "example_inputs", None)
    if own is not None:
        try:
            return coerce(own() if callable(own) else own, "model")
        except InputsError:
            raise
        except Exception as exc:
            raise InputsError(f"`{type(model).__name__}.example_inputs()` raised an exception",
                              why=f"{type(exc).__name__}: {exc}") from exc
    if is_transformers_model(model):
        return transformers_inputs(model, where)
    return infer(model, where)


def is_transformers_model(model: nn.Module) -> bool:
    return any(c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers")
               for c in type(model).__mro__)


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def transformers_inputs(model: nn.Module, where: str = "the model") -> ExampleInputs:
    """Dummy inputs for a Hugging Face model, with the key/value cache disabled."""
    config, gen = model.config, _gen()
    main = getattr(model, "main_input_name", "input_ids")
    kwargs: dict[str, Any] = {}
    if main == "input_ids":
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or SEQ_LEN
        vocab = getattr(config, "vocab_size", None) or 2
        ids = torch.randint(0, vocab, (BATCH, min(SEQ_LEN, limit)), generator=gen)
        kwargs["input_ids"] = ids
        if getattr(config, "is_encoder_decoder", False) and _accepts(model, "decoder_input_ids"):
            kwargs["decoder_input_ids"] = ids.clone()
    elif main == "pixel_values":
        size = getattr(config, "image_size", IMAGE_SIZE)
        size = size if isinstance(size, int) else tuple(size)[0]
        kwargs["pixel_values"] = torch.randn(BATCH, getattr(config, "num_channels", 3), size, size, generator=gen)
    else:
        raise InputsError(f"cannot make example inputs for {where}",
                          why=f"its main input is `{main}`, which initlint does not synthesize",
                          help="return (model, example_inputs) from a factory, or pass --input-shape")
    if _accepts(model, "use_cache"):
        kwargs["use_cache"] = False
    return ExampleInputs((), kwargs, "transformers")


def infer(model: nn.Module, where: str = "the model") -> ExampleInputs:
    """From the first layer, in registration order, that can only be consuming the model's input."""
    gen = _gen()
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            dims = len(m.kernel_size)
            transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
            size = 1 if transposed else {1: 64, 2: IMAGE_SIZE, 3: 16}[dims]
            return _made(torch.randn(BATCH, m.in_channels, *([size] * dims), generator=gen))
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            return _made(torch.randint(0, m.num_embeddings, (BATCH, SEQ_LEN), generator=gen))
        if isinstance(m, nn.Linear):
            return _made(torch.randn(BATCH, m.in_features, generator=gen))
        if isinstance(m, nn.RNNBase):
            shape = (BATCH, SEQ_LEN, m.input_size) if m.batch_first else (SEQ_LEN, BATCH, m.input_size)
            return _made(torch.randn(*shape, generator=gen))
        if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
            d, first = m.self_attn.embed_dim, m.self_attn.batch_first
            x = torch.randn(*((BATCH, SEQ_LEN, d) if first else (SEQ_LEN, BATCH, d)), generator=gen)
            decoder = isinstance(m, nn.TransformerDecoderLayer) or isinstance(model, nn.TransformerDecoder)
            return _made(x, x.clone()) if decoder else _made(x)
        if isinstance(m, nn.MultiheadAttention):
            shape = (BATCH, SEQ_LEN, m.embed_dim) if m.batch_first else (SEQ_LEN, BATCH, m.embed_dim)
            x = torch.randn(*shape, generator=gen)
            return _made(x, x, x)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            dims = {"BatchNorm1d": 1, "BatchNorm2d": 2, "BatchNorm3d": 3}.get(type(m).__name__, 2)
            return _made(torch.randn(BATCH, m.num_features, *([8] * dims), generator=gen))
        if isinstance(m, nn.LayerNorm):
            return _made(torch.randn(BATCH, SEQ_LEN, *m.normalized_shape, generator=gen))
    raise InputsError(
        f"cannot infer example inputs for {where}",
        why="no layer that consumes the input (Conv, Embedding, Linear, RNN, attention) was found",
        help="pass --input-shape (e.g. --input-shape 2,3,32,32), or return (model, example_inputs) from a factory",
    )


def _made(*args: torch.Tensor) -> ExampleInputs:
    return ExampleInputs(tuple(args), {}, "inferred")
