"""Convolution blocks shared by the Wav2Lip networks, and time (un)rolling of 5-D batches.

Submodule names (`conv_block.0`, `conv_block.1`, `act`) are fixed by the published
checkpoints: they become the state_dict keys.
"""
import torch.nn as nn


class Conv2dBlock(nn.Module):
    """conv -> BatchNorm (-> + input if residual) -> ReLU."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, residual=False):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding),
            nn.BatchNorm2d(out_channels),
        )
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x):
        out = self.conv_block(x)
        if self.residual:  # added after BN, before the ReLU, as in the original
            out = out + x
        return self.act(out)


def residual_block(channels):
    """The 3x3, stride 1, shape-preserving residual Conv2dBlock that fills every stage."""
    return Conv2dBlock(channels, channels, 3, 1, 1, residual=True)


class NoNormConv2dBlock(nn.Module):
    """conv -> LeakyReLU(0.01), no normalisation (visual-quality discriminator)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding))
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x):
        return self.act(self.conv_block(x))


class ConvTranspose2dBlock(nn.Module):
    """transposed conv (upsampling) -> BatchNorm -> ReLU."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, output_padding=0):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(out_channels),
        )
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv_block(x))


def unroll_time(x, time_dim):
    """Fold the time axis into the batch, time-major: row t*B + b holds x[b, ..., t, ...]."""
    return x.movedim(time_dim, 0).flatten(0, 1)


def roll_time(x, batch_size, time_dim):
    """Inverse of unroll_time: split the T*B rows into T chunks of B and put time at time_dim."""
    return x.unflatten(0, (-1, batch_size)).movedim(0, time_dim).contiguous()

