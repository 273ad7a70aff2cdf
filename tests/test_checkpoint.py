"""Checkpoint I/O in the published Wav2Lip format: loading, clear errors, atomic saving."""
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import CONFORMANCE
from models import SyncNet_color, Wav2Lip, Wav2Lip_disc_qual
from models.checkpoint import CheckpointError, checkpoint_name, load_state_dict, load_weights, save_checkpoint


@pytest.fixture(scope="module")
def wav2lip_weights(check):
    return check.make_state_dict("wav2lip", 11)


@pytest.fixture(scope="module")
def frame_inputs():
    golden = np.load(CONFORMANCE / "golden_wav2lip_seed11.npz")
    return torch.from_numpy(golden["frame_audio"]), torch.from_numpy(golden["frame_face"])


@pytest.fixture(scope="module")
def reference_output(wav2lip_weights, frame_inputs):
    model = Wav2Lip()
    model.load_state_dict(wav2lip_weights)
    return generate(model, frame_inputs)


def generate(model, inputs):
    with torch.no_grad():
        return model.eval()(*inputs)


def official_checkpoint(state_dict, prefix=""):
    return {"state_dict": {prefix + k: v for k, v in state_dict.items()},
            "optimizer": None, "global_step": 42, "global_epoch": 7}


@pytest.mark.parametrize("layout", ["official", "dataparallel", "bare"])
def test_checkpoint_layouts_load_to_identical_outputs(tmp_path, wav2lip_weights, frame_inputs, reference_output,
                                                      layout):
    saved = {"official": official_checkpoint(wav2lip_weights),
             "dataparallel": official_checkpoint(wav2lip_weights, prefix="module."),
             "bare": wav2lip_weights}[layout]
    path = tmp_path / "wav2lip.pth"
    torch.save(saved, path)

    model = Wav2Lip()
    checkpoint = load_weights(model, path)

    assert torch.equal(generate(model, frame_inputs), reference_output)
    assert list(load_state_dict(path)) == list(wav2lip_weights)
    if layout == "bare":
        assert checkpoint == {}
    else:
        assert (checkpoint["global_step"], checkpoint["global_epoch"]) == (42, 7)


def test_wrong_network_names_file_and_what_it_looks_like(tmp_path, check):
    path = tmp_path / "lipsync_expert.pth"
    torch.save(official_checkpoint(check.make_state_dict("syncnet_color", 11)), path)
    with pytest.raises(CheckpointError) as caught:
        load_weights(Wav2Lip(), path)
    message = str(caught.value)
    assert str(path) in message and "SyncNet_color" in message and "\n" not in message
    # The same file is what SyncNet_color wants.
    load_weights(SyncNet_color(), path, what="SyncNet_color")


@pytest.mark.parametrize("damage", ["truncated", "missing", "not_a_state_dict"])
def test_unusable_files_raise_checkpoint_error_naming_the_file(tmp_path, wav2lip_weights, damage):
    path = tmp_path / "wav2lip.pth"
    if damage == "truncated":
        torch.save(official_checkpoint(wav2lip_weights), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "not_a_state_dict":
        torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError) as caught:
        load_weights(Wav2Lip(), path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def train_one_step(disc, optimizer, face):
    optimizer.zero_grad()
    disc.perceptual_forward(face).backward()
    optimizer.step()


def test_save_checkpoint_round_trip_restores_weights_step_epoch_and_adam_state(tmp_path):
    torch.manual_seed(0)
    face = torch.from_numpy(np.load(CONFORMANCE / "golden_wav2lip_disc_qual_seed11.npz")["face"][:1, :, :2])
    disc = nn.DataParallel(Wav2Lip_disc_qual())  # saved keys must not carry "module."
    optimizer = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.5, 0.999))
    train_one_step(disc.module, optimizer, face)
    path = tmp_path / checkpoint_name(3000, prefix="disc_")

    save_checkpoint(path, disc, optimizer, step=3000, epoch=4)

    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert sorted(raw) == ["global_epoch", "global_step", "optimizer", "state_dict"]
    assert not any(k.startswith("module.") for k in raw["state_dict"])

    restored = Wav2Lip_disc_qual()
    restored_optimizer = torch.optim.Adam(restored.parameters(), lr=1e-4, betas=(0.5, 0.999))
    checkpoint = load_weights(restored, path, what="Wav2Lip_disc_qual")
    restored_optimizer.load_state_dict(checkpoint["optimizer"])
    assert (checkpoint["global_step"], checkpoint["global_epoch"]) == (3000, 4)
    for name, tensor in disc.module.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor)
    original_state, restored_state = optimizer.state_dict(), restored_optimizer.state_dict()
    assert restored_state["param_groups"] == original_state["param_groups"]
    for index, state in original_state["state"].items():
        for key, value in state.items():
            assert torch.equal(restored_state["state"][index][key], value)

    # Resuming continues identically: one more step from both gives the same weights.
    train_one_step(disc.module, optimizer, face)
    train_one_step(restored, restored_optimizer, face)
    for name, tensor in disc.module.state_dict().items():
        assert torch.equal(restored.state_dict()[name], tensor)


def test_failed_save_keeps_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    model = SyncNet_color()
    path = tmp_path / checkpoint_name(1)
    save_checkpoint(path, model, None, step=1, epoch=0)
    before = path.read_bytes()

    def crash_midway(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError):
        save_checkpoint(path, model, None, step=2, epoch=0)

    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [path.name]
    assert load_weights(SyncNet_color(), path, what="SyncNet_color")["optimizer"] is None


def test_checkpoint_name_zero_pads_step_to_nine_digits():
    assert checkpoint_name(3000) == "checkpoint_step000003000.pth"
    assert checkpoint_name(12, prefix="disc_") == "disc_checkpoint_step000000012.pth"
