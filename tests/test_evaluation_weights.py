"""SyncNet v2 structure and weight loading; also home of the deterministic test weights rule."""
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import CONFORMANCE, REPO, SHARED
from evaluation import SyncNetV2, SyncNetWeightsError, load_syncnet

LSE = CONFORMANCE / "lse"
MANIFEST = json.loads((SHARED / "spec" / "syncnet_v2_manifest.json").read_text())
GOLDEN = json.loads((LSE / "golden.json").read_text())


def rule_state_dict(seed=GOLDEN["weights"]["seed"], rule=GOLDEN["weights"]):
    """Deterministic SyncNet v2 weights of conformance/lse/README.md (a test utility)."""
    state = {}
    for i, entry in enumerate(MANIFEST["state_dict"]):
        key, shape = entry["key"], tuple(entry["shape"])
        prefix, field = key.rsplit(".", 1)
        if field == "num_batches_tracked":
            state[key] = torch.zeros((), dtype=torch.int64)
            continue
        z = np.random.default_rng([seed, i]).standard_normal(size=shape)
        if entry["role"].startswith("bn_"):
            value = {"weight": 1 + 0.1 * z, "bias": 0.1 * z, "running_mean": 0.1 * z,
                     "running_var": 1 + 0.1 * np.abs(z)}[field]
        elif field == "weight":
            fan_in = int(np.prod(shape[1:]))
            rows = z.reshape(shape[0], fan_in)
            rows = rows - rows.mean(axis=1, keepdims=True)
            gain = rule["gain"].get(prefix, rule["default_gain"])
            value = (rows * gain / np.sqrt(fan_in)).reshape(shape)
        else:
            value = rule["bias_scale"] * z + (rule["out_bias_const"] if prefix in rule["final_linears"] else 0.0)
        state[key] = torch.from_numpy(value.astype(np.float32))
    return state


def test_public_api_imports_without_side_effects():
    code = ("import evaluation, torch; import sys; print(' '.join(sorted(evaluation.__all__)));"
            "print(torch.backends.cudnn.allow_tf32, 'inference' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.stderr == ""
    names, state = result.stdout.splitlines()
    assert {"SyncNetV2", "mfcc", "score_arrays", "score_video", "load_syncnet"} <= set(names.split())
    assert state == "True False"  # no global switch flipped, no model code loaded
    net = SyncNetV2()
    x = torch.zeros(2, 3, 5, 224, 224)
    with torch.no_grad():
        assert net.eval().forward_lip(x).shape == (2, 1024)
        assert net.forward_aud(torch.zeros(2, 1, 13, 20)).shape == (2, 1024)


def test_rule_weights_match_published_fingerprint():
    digest = hashlib.sha256()
    for key, value in rule_state_dict().items():
        digest.update(key.encode() + value.numpy().tobytes())  # little-endian host
    assert digest.hexdigest() == GOLDEN["weights"]["sha256_of_keys_and_float32_bytes"]


def test_state_dict_matches_manifest():
    state = SyncNetV2().state_dict()
    expected = [(e["key"], tuple(e["shape"]), e["dtype"]) for e in MANIFEST["state_dict"]]
    got = [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items()]
    assert got == expected
    assert sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked")) == MANIFEST["n_parameters"]


def test_embedding_batch_matches_golden():
    batch = np.load(LSE / "embeddings_batch.npz")
    net = load_syncnet(rule_state_dict())
    with torch.no_grad():
        lip_trunk = net.netcnnlip(torch.from_numpy(batch["lip_input_uint8"]).float()).flatten(1)
        lip = net.forward_lip(torch.from_numpy(batch["lip_input_uint8"]).float())
        aud_trunk = net.netcnnaud(torch.from_numpy(batch["aud_input"])).flatten(1)
        aud = net.forward_aud(torch.from_numpy(batch["aud_input"]))
    for got, name in ((lip_trunk, "lip_trunk"), (lip, "lip_emb"), (aud_trunk, "aud_trunk"), (aud, "aud_emb")):
        assert np.abs(got.numpy() - batch[name]).max() <= GOLDEN["tolerance"]["embeddings_abs"], name


def test_loads_file_with_and_without_batch_counters(tmp_path):
    full = rule_state_dict()
    legacy = {k: v for k, v in full.items() if not k.endswith("num_batches_tracked")}
    assert len(full) == MANIFEST["n_keys"] and len(legacy) == MANIFEST["n_keys_without_num_batches_tracked"]
    for name, state in (("full.model", full), ("legacy.model", legacy)):
        torch.save(state, tmp_path / name)
        net = load_syncnet(tmp_path / name)
        assert not net.training
        assert torch.equal(net.state_dict()["netcnnlip.18.weight"], full["netcnnlip.18.weight"])


def test_rejects_wrong_weights_with_clear_message(tmp_path):
    with pytest.raises(SyncNetWeightsError, match="not found"):
        load_syncnet(tmp_path / "syncnet_v2.model")
    state = rule_state_dict()
    state["netfclip.3.weight"] = state["netfclip.3.weight"][:512]
    del state["netcnnaud.0.bias"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(SyncNetWeightsError) as err:
        load_syncnet(state)
    message = str(err.value)
    assert "netcnnaud.0.bias" in message and "extra.weight" in message and "netfclip.3.weight" in message
    assert "\n" not in message
    torch.save({"state_dict": rule_state_dict(), "global_step": 1}, tmp_path / "checkpoint.pth")
    with pytest.raises(SyncNetWeightsError, match="training checkpoint"):
        load_syncnet(tmp_path / "checkpoint.pth")
    (tmp_path / "garbage.model").write_bytes(b"not a torch file")
    with pytest.raises(SyncNetWeightsError, match="cannot read"):
        load_syncnet(tmp_path / "garbage.model")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_embeddings_match_cpu():
    batch = np.load(LSE / "embeddings_batch.npz")
    net = load_syncnet(rule_state_dict(), device="cuda")
    with torch.no_grad():
        lip = net.forward_lip(torch.from_numpy(batch["lip_input_uint8"]).float().cuda()).cpu().numpy()
        aud = net.forward_aud(torch.from_numpy(batch["aud_input"]).cuda()).cpu().numpy()
    assert np.abs(lip - batch["lip_emb"]).max() <= GOLDEN["tolerance"]["embeddings_abs"]
    assert np.abs(aud - batch["aud_emb"]).max() <= GOLDEN["tolerance"]["embeddings_abs"]
