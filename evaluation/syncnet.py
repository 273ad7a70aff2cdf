"""SyncNet v2 (Chung & Zisserman 2016), the network behind LSE-D / LSE-C, and its weight loader.

Layer indices inside each nn.Sequential are part of the state_dict key names, so the
no-op pooling layer of the audio trunk is kept: without it `syncnet_v2.model` would not load.
"""
import os

import torch
from torch import nn


class SyncNetWeightsError(ValueError):
    """A SyncNet v2 weights file that is missing or does not match the network."""


def _lip_trunk():
    return nn.Sequential(
        nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0),
        nn.BatchNorm3d(96), nn.ReLU(inplace=True),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
        nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),
        nn.BatchNorm3d(256), nn.ReLU(inplace=True),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
        nn.BatchNorm3d(256), nn.ReLU(inplace=True),
        nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
        nn.BatchNorm3d(256), nn.ReLU(inplace=True),
        nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)),
        nn.BatchNorm3d(256), nn.ReLU(inplace=True),
        nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
        nn.Conv3d(256, 512, kernel_size=(1, 6, 6)),
        nn.BatchNorm3d(512), nn.ReLU(inplace=True),
    )


def _audio_trunk():
    return nn.Sequential(
        nn.Conv2d(1, 64, kernel_size=3, padding=1),
        nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=1, stride=1),
        nn.Conv2d(64, 192, kernel_size=3, padding=1),
        nn.BatchNorm2d(192), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=(1, 2)),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.BatchNorm2d(384), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.BatchNorm2d(256), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.BatchNorm2d(256), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 512, kernel_size=(5, 4)),
        nn.BatchNorm2d(512), nn.ReLU(inplace=True),
    )


def _head():
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, 1024))


class SyncNetV2(nn.Module):
    """Two streams mapping 5 video frames and 0.2 s of MFCCs to comparable 1024-vectors."""

    def __init__(self):
        super().__init__()
        # Creation order fixes the state_dict order: audio trunk, audio head, lip head, lip trunk.
        self.netcnnaud = _audio_trunk()
        self.netfcaud = _head()
        self.netfclip = _head()
        self.netcnnlip = _lip_trunk()

    def forward_lip(self, x):
        """(N, 3, 5, 224, 224) raw B,G,R pixel values 0..255 -> (N, 1024)."""
        return self.netfclip(self.netcnnlip(x).flatten(1))

    def forward_aud(self, x):
        """(N, 1, 13, 20) MFCC windows -> (N, 1024)."""
        return self.netfcaud(self.netcnnaud(x).flatten(1))


def _describe_mismatch(state_dict, expected):
    """One line naming what is wrong with `state_dict`, or None when it fits `expected`."""
    counters = {k for k in expected if k.endswith(".num_batches_tracked")}
    missing = [k for k in expected if k not in state_dict and k not in counters]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = ["%s %s (expected %s)" % (k, tuple(v.shape), tuple(expected[k].shape))
                   for k, v in state_dict.items()
                   if k in expected and k not in counters and tuple(v.shape) != tuple(expected[k].shape)]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if items:
            problems.append("%d %s: %s%s" % (len(items), label, ", ".join(items[:3]), ", ..." if len(items) > 3 else ""))
    return "; ".join(problems) or None


def load_syncnet(weights, device="cpu"):
    """SyncNetV2 in eval mode from a `syncnet_v2.model` path or an already loaded state dict.

    The file is a plain dict of tensors; it may lack the BatchNorm `num_batches_tracked`
    counters (it predates them), which play no role in eval mode.
    """
    source = weights if isinstance(weights, (str, os.PathLike)) else "the given state dict"
    if isinstance(weights, (str, os.PathLike)):
        if not os.path.isfile(weights):
            raise SyncNetWeightsError("SyncNet weights not found: %s (get syncnet_v2.model with "
                                      "syncnet_python's download_model.sh)" % weights)
        try:
            weights = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and unpickler errors all mean "not a weights file"
            raise SyncNetWeightsError("cannot read SyncNet weights %s: %s" % (source, str(e).splitlines()[0]))
    if not isinstance(weights, dict) or not all(torch.is_tensor(v) for v in weights.values()):
        hint = " (it looks like a training checkpoint, not syncnet_v2.model)" if isinstance(weights, dict) and "state_dict" in weights else ""
        raise SyncNetWeightsError("%s is not a SyncNet v2 state dict%s" % (source, hint))
    model = SyncNetV2()
    full = model.state_dict()
    problem = _describe_mismatch(weights, full)
    if problem:
        raise SyncNetWeightsError("%s does not match SyncNet v2: %s" % (source, problem))
    full.update(weights)
    model.load_state_dict(full)
    return model.to(device).eval()
