"""Real architectures for the tests: small replicas written here, and ``transformers`` models from configs.

Each builder returns ``(model, example_inputs)``, seeded, CPU, small enough to capture in about a second.
The replicas follow the originals' initialization (torchvision's ResNet and MobileNetV2, DCGAN's N(0, 0.02)),
so that what initlint says about them is what it would say about the real thing.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SEED = 0


# -- ResNet with BatchNorm (torchvision-style init) ---------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, widths=(16, 32, 64), blocks=2, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.pool(self.layers(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def resnet():
    torch.manual_seed(SEED)
    return ResNet(), torch.randn(2, 3, 32, 32)


# -- MobileNetV2-style (depthwise separable, inverted residuals) --------------------------------------------


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's init: ``kaiming_normal_(mode="fan_out")`` on every conv, the depthwise ones included."""

    def __init__(self, num_classes=10, init="torchvision"):
        super().__init__()
        cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2)]
        layers, cin = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(inplace=True)], 32
        for t, c, n, s in cfg:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(cin, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if init == "torchvision":
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
                else:  # true fans: fan_in mode is right for depthwise convs too
                    nn.init.kaiming_normal_(m.weight, mode="fan_in")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.features(x).mean((2, 3))
        return self.classifier(x)


def mobilenet(init="torchvision"):
    torch.manual_seed(SEED)
    return MobileNetV2(init=init), torch.randn(2, 3, 32, 32)


# -- U-Net ---------------------------------------------------------------------------------------------------


def _double_conv(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    def __init__(self, cin=3, classes=2, base=16):
        super().__init__()
        self.inc = _double_conv(cin, base)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), _double_conv(base, base * 2))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), _double_conv(base * 2, base * 4))
        self.up1 = nn.ConvTranspose2d(base * 4, base * 2, 2, stride=2)
        self.conv1 = _double_conv(base * 4, base * 2)
        self.up2 = nn.ConvTranspose2d(base * 2, base, 2, stride=2)
        self.conv2 = _double_conv(base * 2, base)
        self.outc = nn.Conv2d(base, classes, 1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        y = self.conv1(torch.cat([x2, self.up1(x3)], dim=1))
        y = self.conv2(torch.cat([x1, self.up2(y)], dim=1))
        return self.outc(y)


def unet():
    torch.manual_seed(SEED)
    return UNet(), torch.randn(2, 3, 32, 32)


# -- DCGAN generator ------------------------------------------------------------------------------------------


class DCGANGenerator(nn.Module):
    """DCGAN (Radford et al.): kernel 4, stride 2 transposed convs, weights N(0, 0.02), BatchNorm N(1, 0.02)."""

    def __init__(self, nz=16, ngf=16, nc=3, kernel=4):
        super().__init__()
        pad = 1 if kernel == 4 else 1
        out_pad = 0 if kernel == 4 else 1
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 4, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, kernel, 2, pad, out_pad, bias=False), nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, kernel, 2, pad, out_pad, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, kernel, 2, pad, out_pad, bias=False), nn.Tanh(),
        )
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z):
        return self.main(z)


def dcgan(kernel=4):
    torch.manual_seed(SEED)
    return DCGANGenerator(kernel=kernel), torch.randn(2, 16, 1, 1)


# -- PyTorch's own transformer and LSTM ------------------------------------------------------------------------


def transformer_encoder(norm_first: bool, layers=4, d=64):
    torch.manual_seed(SEED)
    layer = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.1, batch_first=True, norm_first=norm_first)
    model = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    return model, torch.randn(2, 16, d)


class PreLNBlock(nn.Module):
    """A Pre-LN block with its own, independently initialized weights."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class PreLNTransformer(nn.Module):
    def __init__(self, layers=4, d=64, heads=4):
        super().__init__()
        self.blocks = nn.ModuleList(PreLNBlock(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.ln_f(x)


def pre_ln_transformer():
    torch.manual_seed(SEED)
    return PreLNTransformer(), torch.randn(2, 16, 64)


class LSTMTagger(nn.Module):
    def __init__(self, vocab=100, d=32, hidden=64, tags=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.lstm = nn.LSTM(d, hidden, num_layers=2, batch_first=True)
        self.out = nn.Linear(hidden, tags)

    def forward(self, ids):
        h, _ = self.lstm(self.embed(ids))
        return self.out(h)


def lstm():
    torch.manual_seed(SEED)
    return LSTMTagger(), torch.randint(0, 100, (2, 12))


# -- transformers models from configs (random weights, no downloads) ------------------------------------------

VOCAB = 128


def _ids(batch=2, seq=16):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(SEED))


def _hf(model):
    """transformers' own dummy inputs come from initlint; here, explicit kwargs with the cache off."""
    return model


def bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(SEED)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64)
    return BertModel(cfg), {"input_ids": _ids()}


def distilbert():
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(SEED)
    cfg = DistilBertConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                           max_position_embeddings=64)
    return DistilBertModel(cfg), {"input_ids": _ids()}


def gpt2():
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(SEED)
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                     bos_token_id=0, eos_token_id=0)
    return GPT2Model(cfg), {"input_ids": _ids(), "use_cache": False}


def llama():
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(SEED)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaModel(cfg), {"input_ids": _ids(), "use_cache": False}


def t5_encoder():
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(SEED)
    cfg = T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(cfg), {"input_ids": _ids()}


def vit():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(SEED)
    cfg = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2,
                    num_attention_heads=4, intermediate_size=128)
    return ViTModel(cfg, add_pooling_layer=False), {"pixel_values": torch.randn(2, 3, 32, 32)}


REPLICAS = {
    "resnet": resnet, "mobilenet": mobilenet, "unet": unet, "dcgan": dcgan,
    "post_ln_encoder": lambda: transformer_encoder(False), "pre_ln_encoder": lambda: transformer_encoder(True),
    "pre_ln_transformer": pre_ln_transformer, "lstm": lstm,
}
TRANSFORMERS = {"bert": bert, "distilbert": distilbert, "gpt2": gpt2, "llama": llama, "t5_encoder": t5_encoder,
                "vit": vit}
ALL = {**REPLICAS, **TRANSFORMERS}

__all__ = ["ALL", "REPLICAS", "TRANSFORMERS", "math"]
