"""The networks of the task families, built from a concrete task config.

Small, plain ``nn.Module`` s: no dropout and no other randomness in the forward pass, so a task's
losses depend only on its initial weights and data order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..spec.families import CNNTask, MLPTask, RegressionTask, RNNTask, TextRNNTask, TransformerTask

# --- building blocks -----------------------------------------------------------------------------


def activation(name: str) -> nn.Module:
    """The five activations of Appendix H ('very leaky' ReLU uses slope 0.3, leaky 0.01), and tanh
    and GELU for the regression family."""
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01)
    if name == "very_leaky_relu":
        return nn.LeakyReLU(0.3)
    if name == "elu":
        return nn.ELU()
    if name == "prelu":
        return nn.PReLU()
    if name == "tanh":  # the regression family's (with gelu); the paper's five are above
        return nn.Tanh()
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation '{name}'")


class ChannelLayerNorm(nn.Module):
    """LayerNorm over (C, H, W) of each image, with a per-channel affine transform."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        x = F.layer_norm(x, x.shape[1:])
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def norm(name: str, features: int, conv: bool) -> nn.Module:
    if name == "none":
        return nn.Identity()
    if name == "batch":
        return nn.BatchNorm2d(features) if conv else nn.BatchNorm1d(features)
    if name == "layer":
        return ChannelLayerNorm(features) if conv else nn.LayerNorm(features)
    raise ValueError(f"unknown normalization '{name}'")


# --- image classifiers ---------------------------------------------------------------------------


def build_mlp(task: MLPTask | RegressionTask, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Flatten -> [Linear -> norm -> activation] per hidden layer -> Linear (``num_classes`` outputs;
    one for a regression task)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(in_shape)
    for units in task.hidden:
        layers += [nn.Linear(width, units), norm(task.norm, units, conv=False), activation(task.activation)]
        width = units
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def build_cnn(task: CNNTask, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """[Conv (same padding) -> norm -> activation -> downsample] per layer -> global average -> Linear.

    Downsampling halves the spatial size with a 2x2 max or average pool, or with stride 2 in the
    convolution itself; it stops once the feature map is 1 pixel wide.
    """
    channels, size = in_shape[0], in_shape[-1]
    layers: list[nn.Module] = []
    for out in task.channels:
        down = size >= 2
        stride = 2 if (down and task.pooling == "stride") else 1
        layers += [
            nn.Conv2d(channels, out, task.kernel_size, stride=stride, padding=task.kernel_size // 2),
            norm(task.norm, out, conv=True),
            activation(task.activation),
        ]
        if down and task.pooling in ("max", "avg"):
            layers.append(nn.MaxPool2d(2) if task.pooling == "max" else nn.AvgPool2d(2))
        if down:
            size = (size + 1) // 2 if stride == 2 else size // 2
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


# --- recurrent networks --------------------------------------------------------------------------

_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class SequenceTagger(nn.Module):
    """A recurrent network that predicts a class at every time step (algorithmic tasks)."""

    def __init__(self, task: RNNTask, in_features: int, num_classes: int):
        super().__init__()
        self.rnn = _CELLS[task.cell](in_features, task.hidden_size, task.num_layers, batch_first=True)
        self.head = nn.Linear(task.hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, F) -> (B, L, C)
        out = unrolled_rnn(self.rnn, x) if self.unrolled else self.rnn(x)[0]
        return self.head(out)

    #: Step through time with explicit cell equations instead of torch's fused recurrent kernel:
    #: slower for one model, but batchable with ``torch.func.vmap`` (populations switch it on).
    unrolled = False


def unrolled_rnn(rnn: nn.RNNBase, x: torch.Tensor) -> torch.Tensor:
    """Output (B, L, H) of a unidirectional, batch-first ``nn.RNN``/``nn.GRU``/``nn.LSTM`` over ``x``.

    The cell equations of torch's documentation (gate order r, z, n for GRU and i, f, g, o for
    LSTM), written with plain ops on the module's own parameters, from a zero initial state.
    """
    if rnn.bidirectional or not rnn.batch_first or getattr(rnn, "proj_size", 0):
        raise ValueError("unrolled_rnn supports unidirectional, batch-first recurrent layers without projections")
    b = x.shape[0]
    for layer in range(rnn.num_layers):
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        b_ih, b_hh = getattr(rnn, f"bias_ih_l{layer}", None), getattr(rnn, f"bias_hh_l{layer}", None)
        # The input's share of the gates for every step at once, (B, G*H) per step. Unbinding (rather
        # than indexing step t) keeps the backward pass linear in the length: the gradients of the
        # steps are stacked once instead of each being scattered into a zero tensor of the whole input.
        gates_x = F.linear(x, w_ih, b_ih).unbind(1)
        h = x.new_zeros(b, rnn.hidden_size)
        c = x.new_zeros(b, rnn.hidden_size)
        outputs = []
        for gx in gates_x:
            gh = F.linear(h, w_hh, b_hh)
            if isinstance(rnn, nn.GRU):
                xr, xz, xn = gx.chunk(3, 1)
                hr, hz, hn = gh.chunk(3, 1)
                r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                n = torch.tanh(xn + r * hn)
                h = (1 - z) * n + z * h
            elif isinstance(rnn, nn.LSTM):
                i, f, g, o = (gx + gh).chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            else:
                h = torch.tanh(gx + gh) if rnn.nonlinearity == "tanh" else torch.relu(gx + gh)
            outputs.append(h)
        x = torch.stack(outputs, 1)
    return x


class SentenceClassifier(nn.Module):
    """Embedding -> recurrent network over the unpadded sentence -> final state -> classes."""

    def __init__(self, task: TextRNNTask, num_classes: int):
        super().__init__()
        self.embed = nn.Embedding(task.vocab_size, task.embed_dim, padding_idx=0)
        self.rnn = _CELLS[task.cell](
            task.embed_dim, task.hidden_size, task.num_layers, batch_first=True, bidirectional=task.bidirectional
        )
        self.head = nn.Linear(task.hidden_size * (2 if task.bidirectional else 1), num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, L) ids, 0 = padding -> (B, C)
        lengths = (tokens != 0).sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(tokens), lengths, batch_first=True, enforce_sorted=False)
        _, state = self.rnn(packed)
        h = state[0] if isinstance(state, tuple) else state  # (layers * dirs, B, H)
        last = h[-2:] if self.rnn.bidirectional else h[-1:]
        return self.head(torch.cat(list(last), dim=-1))


# --- transformer language model ------------------------------------------------------------------


class Block(nn.Module):
    """Causal self-attention and a GELU feed-forward, each with a residual and a LayerNorm."""

    def __init__(self, d_model: int, num_heads: int, ff_mult: int, pre_norm: bool):
        super().__init__()
        self.num_heads, self.pre_norm = num_heads, pre_norm
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff_mult * d_model), nn.GELU(), nn.Linear(ff_mult * d_model, d_model))
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    #: Attention as plain matrix products instead of the fused kernel: the same maths, and
    #: batchable with ``torch.func.vmap`` on every device (populations switch it on).
    explicit_attention = False

    def attention(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.explicit_attention:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.num_heads)
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            y = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D/H)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attention(self.norm1(x))
            return x + self.ff(self.norm2(x))
        x = self.norm1(x + self.attention(x))
        return self.norm2(x + self.ff(x))


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return table


class TransformerLM(nn.Module):
    """Decoder-only Transformer over token ids; returns next-token logits."""

    def __init__(self, task: TransformerTask, vocab_size: int):
        super().__init__()
        d = task.d_model
        self.embed = nn.Embedding(vocab_size, d)
        if task.positional == "learned":
            self.pos = nn.Parameter(torch.randn(task.seq_len, d) * 0.02)
        else:
            self.register_buffer("pos", sinusoidal_positions(task.seq_len, d), persistent=False)
        pre = task.norm_position == "pre"
        self.blocks = nn.ModuleList(Block(d, task.num_heads, task.ff_mult, pre) for _ in range(task.num_layers))
        self.final_norm = nn.LayerNorm(d) if pre else nn.Identity()
        self.head = nn.Linear(d, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x))


# --- forms for populations -----------------------------------------------------------------------


def use_batchable_forms(model: nn.Module, on: bool = True) -> bool:
    """Switch ``model``'s fused kernels (recurrent layers, attention) to their explicit forms, which
    ``torch.func.vmap`` batches over a population's members, or (``on=False``) back to the fused
    kernels a one-model run uses. The same maths either way; returns whether ``model`` has any."""
    found = False
    for module in model.modules():
        if isinstance(module, SequenceTagger):
            module.unrolled, found = on, True
        elif isinstance(module, Block):
            module.explicit_attention, found = on, True
    return found
