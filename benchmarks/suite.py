"""The architectures the accuracy benchmark runs: small, seeded, CPU; each builder returns (model, inputs).

Plain MLPs (ReLU and tanh, several depths and inits), a CNN, ResNets with and without BatchNorm, Pre-LN and
Post-LN transformers, a U-Net, a MobileNet-style network, a DCGAN generator, recurrent nets, and transformers
models built from small configs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SEED = 0


def _gen(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- MLPs ---------------------------------------------------------------------------------------------------


def mlp(depth: int, act: str, init: str, width: int = 256, batch: int = 64):
    torch.manual_seed(SEED)
    layers: list[nn.Module] = []
    for _ in range(depth):
        lin = nn.Linear(width, width)
        if init == "kaiming":
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            nn.init.zeros_(lin.bias)
        elif init == "xavier":
            nn.init.xavier_normal_(lin.weight, gain=nn.init.calculate_gain(act))
            nn.init.zeros_(lin.bias)
        elif init == "wide":  # too large: std 1.5 / sqrt(fan_in)
            nn.init.normal_(lin.weight, std=1.5 / math.sqrt(width))
        layers += [lin, nn.ReLU() if act == "relu" else nn.Tanh()]
    return nn.Sequential(*layers), torch.randn(batch, width, generator=_gen())


# -- convolutional --------------------------------------------------------------------------------------------


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def cnn():
    torch.manual_seed(SEED)
    return CNN(), torch.randn(8, 3, 32, 32, generator=_gen())


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: bool):
        super().__init__()
        bn = (lambda c: nn.BatchNorm2d(c)) if norm else (lambda c: nn.Identity())
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not norm), bn(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not norm), bn(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn(cout))
        self.scale = 1.0 if norm else 1 / math.sqrt(2)

    def forward(self, x):
        skip = x if self.short is None else self.short(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu((out + skip) * self.scale)


class ResNet(nn.Module):
    def __init__(self, norm: bool, widths=(16, 32, 64), blocks=2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=not norm),
                                  nn.BatchNorm2d(widths[0]) if norm else nn.Identity(), nn.ReLU())
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks):
                layers.append(Block(cin, w, 2 if (j == 0 and i > 0) else 1, norm))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, 10)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out" if norm else "fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def resnet_bn():
    torch.manual_seed(SEED)
    return ResNet(norm=True), torch.randn(8, 3, 32, 32, generator=_gen())


def resnet_nonorm():
    torch.manual_seed(SEED)
    return ResNet(norm=False), torch.randn(8, 3, 32, 32, generator=_gen())


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.block(x) if self.use_res else self.block(x)


class MobileNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(16, 16, 1), InvertedResidual(16, 24, 2),
                                    InvertedResidual(24, 24, 1), InvertedResidual(24, 32, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, 10))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def mobilenet():
    torch.manual_seed(SEED)
    return MobileNet(), torch.randn(8, 3, 32, 32, generator=_gen())


class UNet(nn.Module):
    def __init__(self, c: int = 16):
        super().__init__()

        def double(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1),
                                 nn.ReLU())

        self.down1, self.down2, self.mid = double(3, c), double(c, 2 * c), double(2 * c, 4 * c)
        self.pool = nn.MaxPool2d(2)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, 2), double(4 * c, 2 * c)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * c, c, 2, 2), double(2 * c, c)
        self.out = nn.Conv2d(c, 1, 1)

    def forward(self, x):
        d1 = self.down1(x)
        d2 = self.down2(self.pool(d1))
        m = self.mid(self.pool(d2))
        u2 = self.dec2(torch.cat([self.up2(m), d2], 1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], 1))
        return self.out(u1)


def unet():
    torch.manual_seed(SEED)
    return UNet(), torch.randn(4, 3, 32, 32, generator=_gen())


class DCGAN(nn.Module):
    def __init__(self, z: int = 64, c: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(z, 4 * c, 4, 1, 0, bias=False), nn.BatchNorm2d(4 * c), nn.ReLU(),
            nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU(),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.ConvTranspose2d(c, 3, 4, 2, 1, bias=False), nn.Tanh(),
        )
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z):
        return self.net(z)


def dcgan():
    torch.manual_seed(SEED)
    return DCGAN(), torch.randn(8, 64, 1, 1, generator=_gen())


# -- sequence models ----------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """Independently initialized ``nn.TransformerEncoderLayer``s (``nn.TransformerEncoder`` deep-copies one
    layer: identical layers correlate, which the engine does not model; see docs/engine.md)."""

    def __init__(self, norm_first: bool, layers: int, d: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.1, batch_first=True, norm_first=norm_first)
            for _ in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def transformer(norm_first: bool, layers: int = 4, d: int = 64, copied: bool = False):
    torch.manual_seed(SEED)
    if copied:
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.1, batch_first=True, norm_first=norm_first)
        model = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    else:
        model = Encoder(norm_first, layers, d)
    return model, torch.randn(8, 32, d, generator=_gen())


class RNNTagger(nn.Module):
    def __init__(self, kind: str, vocab: int = 100, d: int = 64):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind]
        self.rnn = cls(d, d, num_layers=2, batch_first=True)
        self.head = nn.Linear(d, 10)

    def forward(self, ids):
        out, _ = self.rnn(self.emb(ids))
        return self.head(out)


def rnn(kind: str):
    torch.manual_seed(SEED)
    return RNNTagger(kind), torch.randint(0, 100, (8, 24), generator=_gen())


# -- transformers library -------------------------------------------------------------------------------------


def _ids(vocab: int = 100, batch: int = 8, seq: int = 32):
    return torch.randint(0, vocab, (batch, seq), generator=_gen())


def _hf(build):
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(SEED)
    return build(transformers)


def bert():
    model = _hf(lambda t: t.BertModel(t.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                                   intermediate_size=256, vocab_size=100,
                                                   max_position_embeddings=64)))
    return model, {"input_ids": _ids()}


def gpt2():
    model = _hf(lambda t: t.GPT2Model(t.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=64)))
    return model, {"input_ids": _ids(), "use_cache": False}


def llama():
    model = _hf(lambda t: t.LlamaModel(t.LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                                     num_key_value_heads=2, intermediate_size=172, vocab_size=100,
                                                     max_position_embeddings=64)))
    return model, {"input_ids": _ids(), "use_cache": False}


def t5_encoder():
    model = _hf(lambda t: t.T5EncoderModel(t.T5Config(num_layers=2, d_model=64, d_kv=16, num_heads=4, d_ff=256,
                                                      vocab_size=100)))
    return model, {"input_ids": _ids()}


def vit():
    model = _hf(lambda t: t.ViTModel(t.ViTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                                 intermediate_size=256, image_size=32, patch_size=8)))
    return model, {"pixel_values": torch.randn(4, 3, 32, 32, generator=_gen())}


SUITE = {
    **{f"mlp-relu-{d}-{i}": (lambda d=d, i=i: mlp(d, "relu", i)) for d in (4, 16) for i in ("kaiming", "default")},
    **{f"mlp-tanh-{d}-{i}": (lambda d=d, i=i: mlp(d, "tanh", i)) for d in (4, 16) for i in ("xavier", "wide")},
    "cnn": cnn,
    "resnet-bn": resnet_bn,
    "resnet-nonorm": resnet_nonorm,
    "pre-ln-transformer": lambda: transformer(True),
    "post-ln-transformer": lambda: transformer(False),
    "pre-ln-copied-layers": lambda: transformer(True, copied=True),
    "unet": unet,
    "mobilenet": mobilenet,
    "dcgan": dcgan,
    "rnn": lambda: rnn("rnn"),
    "lstm": lambda: rnn("lstm"),
    "gru": lambda: rnn("gru"),
    "bert": bert,
    "gpt2": gpt2,
    "llama": llama,
    "t5-encoder": t5_encoder,
    "vit": vit,
}
