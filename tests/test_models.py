"""The three Wav2Lip networks against the conformance kit's manifests and golden outputs."""
import numpy as np
import pytest
import torch

from conftest import CONFORMANCE
from models import SyncNet_color, Wav2Lip, Wav2Lip_disc_qual

NETWORKS = {"wav2lip": Wav2Lip, "syncnet_color": SyncNet_color, "wav2lip_disc_qual": Wav2Lip_disc_qual}


@pytest.mark.parametrize("name", NETWORKS)
def test_network_conforms_to_goldens(check, name):
    check.check_model(name, NETWORKS[name])  # raises ConformanceError with a per-output report


@pytest.mark.parametrize("name", NETWORKS)
def test_parameter_counts_match_manifest(check, name):
    manifest = check.load_manifest(name)
    model = NETWORKS[name]()
    parameters = list(model.parameters())
    assert sum(p.numel() for p in parameters) == manifest["num_parameters"]
    assert len(parameters) == manifest["num_parameter_tensors"]
    assert len(model.state_dict()) == manifest["num_state_dict_entries"]
    assert sum(t.numel() for t in model.state_dict().values()) == manifest["num_state_dict_elements"]


def test_disc_perceptual_loss_is_bce_against_real_and_backpropagates(check):
    disc = Wav2Lip_disc_qual()
    disc.load_state_dict(check.make_state_dict("wav2lip_disc_qual", 11))
    face = torch.from_numpy(np.load(CONFORMANCE / "golden_wav2lip_disc_qual_seed11.npz")["face"])
    face.requires_grad_(True)

    loss = disc.perceptual_forward(face)
    loss.backward()

    with torch.no_grad():
        verdicts = disc(face)
    assert loss.dim() == 0
    torch.testing.assert_close(loss.detach(), -torch.log(verdicts).mean())
    assert face.grad is not None and face.grad.abs().sum() > 0
    # Only the lower half of each face is judged, so the upper half gets no gradient.
    assert face.grad[..., :48, :].abs().sum() == 0
