"""Reading and writing checkpoints in the format of the published Wav2Lip files.

A checkpoint is torch.save({"state_dict", "optimizer", "global_step", "global_epoch"}) as
written by the original trainers (wav2lip.pth, wav2lip_gan.pth, lipsync_expert.pth, disc
checkpoints); the S3FD weights are a bare state_dict. Keys saved from nn.DataParallel carry
a "module." prefix, which loading strips.
"""
import os
from collections.abc import Mapping

import torch
import torch.nn as nn

# A few key names only one of the known networks has, to tell the user what a wrong file is.
NETWORK_SIGNATURES = {
    "Wav2Lip": ("face_decoder_blocks.0.0.conv_block.0.weight", "output_block.1.weight"),
    "SyncNet_color": ("face_encoder.0.conv_block.0.weight", "audio_encoder.13.conv_block.0.weight"),
    "Wav2Lip_disc_qual": ("face_encoder_blocks.0.0.conv_block.0.weight", "binary_pred.0.weight"),
    "S3FD": ("conv3_3_norm.weight", "fc7_mbox_conf.weight"),
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the fix."""


def checkpoint_name(step, prefix=""):
    return f"{prefix}checkpoint_step{step:09d}.pth"


def load_state_dict(path):
    """The state_dict stored in `path` (full checkpoint or bare state_dict), "module." stripped."""
    return _read(path)[1]


def load_weights(model, path, what="Wav2Lip"):
    """Load `path` into `model` (strict) and return the checkpoint dict ({} for a bare state_dict).

    The returned dict carries "optimizer", "global_step" and "global_epoch" for resuming.
    """
    checkpoint, state_dict = _read(path)
    model = unwrap(model)
    problem = _mismatch(model.state_dict(), state_dict)
    if problem:
        guess = guess_network(state_dict)
        if guess is None:
            looks = "its keys match none of the known networks (%s)" % ", ".join(NETWORK_SIGNATURES)
        else:
            looks = f"it looks like a checkpoint of {guess}"
        fix = f"pass a {what} checkpoint" if guess != what else f"pass one saved from the standard {what}"
        raise CheckpointError(f"{os.fspath(path)} does not fit {what}: {looks} ({problem}); {fix}")
    model.load_state_dict(state_dict, strict=True)
    return checkpoint


def save_checkpoint(path, model, optimizer, step, epoch):
    """Write the original checkpoint format atomically: a crash never leaves a half-written file."""
    checkpoint = {
        "state_dict": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        # Plain ints: numpy integers would make the file unloadable with weights_only=True.
        "global_step": int(step),
        "global_epoch": int(epoch),
    }
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp{os.getpid()}"  # same folder, so os.replace is an atomic rename
    try:
        with open(temporary, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def unwrap(model):
    """The network inside a DataParallel / DistributedDataParallel wrapper (or the model itself)."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    return model


def guess_network(state_dict):
    """Name of the known network whose distinctive keys `state_dict` has, or None."""
    for name, keys in NETWORK_SIGNATURES.items():
        if all(k in state_dict for k in keys):
            return name
    return None


def require_file(path):
    """`path` as a string; CheckpointError when no file is there."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise CheckpointError(f"no checkpoint file at {name}; check the path")
    return name


def _read(path):
    """(checkpoint dict or {} for a bare state_dict, state_dict with "module." stripped)."""
    name = require_file(path)
    try:
        loaded = torch.load(name, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, KeyError... on bad files
        raise CheckpointError(
            f"cannot read {name} as a PyTorch checkpoint ({_first_line(error)}); the file is truncated, "
            "corrupt or holds pickled objects other than tensors: download or save it again") from error
    if isinstance(loaded, Mapping) and "state_dict" in loaded:
        checkpoint, state_dict = dict(loaded), loaded["state_dict"]
    else:
        checkpoint, state_dict = {}, loaded
    if not (isinstance(state_dict, Mapping) and state_dict
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in state_dict.items())):
        raise CheckpointError(
            f"{name} is not a model checkpoint (found {type(state_dict).__name__}, expected a state_dict "
            "or a dict with a 'state_dict' entry); pass a .pth written by training or an official release")
    prefix = "module."
    stripped = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}
    return checkpoint, stripped


def _mismatch(expected, given):
    """One-line summary of how `given` differs from `expected` in keys and shapes ("" if it fits)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [k for k in expected if k in given and given[k].shape != expected[k].shape]
    if not (missing or unexpected or reshaped):
        return ""
    summary = f"{len(missing)} missing, {len(unexpected)} unexpected keys"
    if reshaped:
        k = reshaped[0]
        summary += (f", {len(reshaped)} shape mismatches, first {k}: file {tuple(given[k].shape)}"
                    f" vs model {tuple(expected[k].shape)}")
    return summary


def _first_line(error):
    """The informative line of a (often multi-paragraph) torch.load error, shortened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # weights_only failures put the actual cause on an "...Unpickler error: ..." line.
    reason = next((line for line in lines if "Unpickler error" in line), lines[0] if lines else "")
    reason = reason.split(". ")[0]
    text = f"{type(error).__name__}: {reason}" if reason else type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."
