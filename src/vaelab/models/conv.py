"""Convolutional encoder and its mirror-image transposed-convolution decoder.

Both size themselves from the image shape (C, H, W): each conv layer halves
the resolution (stride 2, padding (k-1)//2), and each transposed conv of the
decoder restores the exact size the encoder saw (output_padding 0 or 1), so
odd sizes like 28 -> 14 -> 7 or 30 -> 15 -> 8 round-trip exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from vaelab import noise
from vaelab.errors import ConfigError


def conv_sizes(height: int, width: int, n_layers: int, kernel: int) -> list[tuple[int, int]]:
    """Spatial size after each stride-2 conv, starting with the input's."""
    pad = (kernel - 1) // 2
    sizes = [(height, width)]
    for _ in range(n_layers):
        h, w = sizes[-1]
        sizes.append(((h + 2 * pad - kernel) // 2 + 1, (w + 2 * pad - kernel) // 2 + 1))
    if min(min(s) for s in sizes) < 1:
        raise ConfigError(
            f"images of {height}x{width} are too small for {n_layers} stride-2 conv layers; "
            "use fewer model.conv_channels or a larger data.image_size"
        )
    return sizes


class ReLUDropout(nn.Module):
    """ReLU, then dropout with probability p in training mode (no parameters)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return noise.dropout(torch.relu(x), self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def relu(dropout: float = 0.0) -> nn.Module:
    """The hidden activation: ReLU, with dropout after it when `dropout` > 0. Either way one module without
    parameters, so the weights' names, and checkpoints written without dropout, stay the same.

    In place: it always follows a linear or convolution layer, whose backward needs that layer's input,
    not its output, so overwriting the output is safe; it saves allocating (and page-faulting) a second
    activation-sized buffer per layer (in place took about a third of the time here: bench/kernels.py)."""
    return ReLUDropout(dropout) if dropout > 0 else nn.ReLU(inplace=True)


class FoldConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d computed as one matrix product and a col2im (F.fold): the same parameters, the
    same numbers (up to float rounding), for a layer with few output channels.

    oneDNN's transposed convolution is slow when it outputs one or a few channels (the decoder's last
    layer): on this project's CPU it ran at about 2 GFLOP/s there. Written as x (B*H*W, C_in) @ W (C_in,
    C_out*k*k) and an overlap-add of the k*k patches, the same layer took a third of the time forward and
    two thirds forward and backward (bench/kernels.py). Anything unusual (groups, dilation, an explicit output_size, other
    padding modes) goes to nn.ConvTranspose2d."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if (output_size is not None or x.dim() != 4 or self.groups != 1 or self.dilation != (1, 1)
                or self.padding_mode != "zeros"):
            return super().forward(x, output_size)
        b, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        ho = (h - 1) * sh - 2 * ph + kh + self.output_padding[0]
        wo = (w - 1) * sw - 2 * pw + kw + self.output_padding[1]
        # channels-last input: (B, H*W, C_in) is a view, no copy
        cols = x.permute(0, 2, 3, 1).reshape(b, h * w, c) @ self.weight.reshape(c, -1)  # (B, H*W, C_out*k*k)
        y = nn.functional.fold(cols.transpose(1, 2), (ho, wo), (kh, kw), padding=(ph, pw), stride=(sh, sw))
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


def transposed_conv(cin: int, cout: int, kernel: int, stride: int, padding: int,
                    output_padding: tuple[int, int]) -> nn.ConvTranspose2d:
    """The decoder's upsampling layer: `FoldConvTranspose2d` where it is faster (few output channels:
    C_out * k * k <= C_in), else nn.ConvTranspose2d; both have the same parameters and state_dict."""
    cls = FoldConvTranspose2d if cout * kernel * kernel <= cin else nn.ConvTranspose2d
    return cls(cin, cout, kernel, stride=stride, padding=padding, output_padding=output_padding)


class ConvEncoder(nn.Module):
    """x (B, C, H, W) -> features (B, out_dim) via stride-2 convs, then linear layers."""

    def __init__(self, image_shape: tuple[int, int, int], channels: tuple[int, ...], kernel: int,
                 fc_hidden: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        c, h, w = image_shape
        sizes = conv_sizes(h, w, len(channels), kernel)
        layers: list[nn.Module] = []
        prev = c
        for ch in channels:
            layers += [nn.Conv2d(prev, ch, kernel, stride=2, padding=(kernel - 1) // 2), relu(dropout)]
            prev = ch
        layers.append(nn.Flatten())
        features = prev * sizes[-1][0] * sizes[-1][1]
        if fc_hidden:
            layers += [nn.Linear(features, fc_hidden), relu(dropout)]
            features = fc_hidden
        layers.append(nn.Linear(features, out_dim))
        self.net = nn.Sequential(*layers)
        self._flatten = len(channels) * 2  # index of the Flatten layer in `net`
        self._top = (prev, *sizes[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net, i = self.net, self._flatten
        h = net[:i](x)
        if not _is_channels_last(h):
            return net[i:](h)
        # channels-last features: flatten them in their memory order (H, W, C), a view, and permute the
        # first linear layer's weight columns to match: the same numbers without copying the features
        fc = net[i + 1]
        c, hh, ww = self._top
        weight = fc.weight.view(-1, c, hh, ww).permute(0, 2, 3, 1).reshape(fc.weight.shape[0], -1)
        h = nn.functional.linear(h.permute(0, 2, 3, 1).reshape(h.shape[0], -1), weight, fc.bias)
        return net[i + 2:](h)


class ConvDecoder(nn.Module):
    """z (B, latent) -> image parameters (B, C, H, W), mirroring `ConvEncoder`."""

    def __init__(self, image_shape: tuple[int, int, int], channels: tuple[int, ...], kernel: int,
                 fc_hidden: int, latent_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        c, h, w = image_shape
        sizes = conv_sizes(h, w, len(channels), kernel)
        pad = (kernel - 1) // 2
        top = (channels[-1], *sizes[-1])
        layers: list[nn.Module] = []
        features = latent_dim
        if fc_hidden:
            layers += [nn.Linear(features, fc_hidden), relu(dropout)]
            features = fc_hidden
        layers += [nn.Linear(features, top[0] * top[1] * top[2]), relu(dropout),
                   nn.Unflatten(1, top)]
        outs = list(reversed(channels[:-1])) + [c]
        ins = list(reversed(channels))
        for i, (cin, cout) in enumerate(zip(ins, outs)):
            (hi, wi), (ho, wo) = sizes[-1 - i], sizes[-2 - i]
            base_h, base_w = (hi - 1) * 2 - 2 * pad + kernel, (wi - 1) * 2 - 2 * pad + kernel
            layers.append(transposed_conv(cin, cout, kernel, 2, pad, (ho - base_h, wo - base_w)))
            if i < len(ins) - 1:  # no activation on the output: logits / pre-sigmoid means
                layers.append(relu(dropout))
        self.net = nn.Sequential(*layers)
        self._unflatten = 4 if fc_hidden else 2  # index of the Unflatten layer in `net`
        self._top = top

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        net, i = self.net, self._unflatten
        if not _is_channels_last(net[i + 1].weight):
            return net(z)
        # the convolutions run channels-last: let the linear layer write its output in that memory order
        # (H, W, C), by permuting its weight rows, so the feature map is a view and no copy is needed
        h = net[:i - 2](z)
        fc = net[i - 2]
        c, hh, ww = self._top
        weight = fc.weight.view(c, hh, ww, -1).permute(1, 2, 0, 3).reshape(fc.weight.shape)
        bias = fc.bias.view(c, hh, ww).permute(1, 2, 0).reshape(-1)
        h = net[i - 1](nn.functional.linear(h, weight, bias))  # activation (and dropout): elementwise
        return net[i + 1:](h.view(-1, hh, ww, c).permute(0, 3, 1, 2))


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.shape[1] > 1 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous()
