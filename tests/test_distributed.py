"""color_syncnet_train.py under `torchrun --nproc_per_node 2` with gloo on CPU: both ranks end
with identical weights, metrics are reduced over ranks, and only rank 0 writes (acceptance 4)."""
import json
import os
import subprocess
import sys

import torch

from conftest import REPO
from training.filelists import write_filelists
from training.synthetic import make_corpus

# Runs the real trainer in each rank, spying on which checkpoints the rank writes and keeping the
# model it trained, then leaves each rank's parameters' fingerprint in <probe_dir>/rank<r>.json.
PROBE = """
import hashlib, json, os, sys
sys.path.insert(0, {repo!r})
import color_syncnet_train
import training.run
from training import distributed

probe_dir, argv = sys.argv[1], sys.argv[2:]
written, models = [], []
save_checkpoint, wrap = training.run.save_checkpoint, distributed.wrap
training.run.save_checkpoint = lambda path, *args: (written.append(os.path.basename(path)), save_checkpoint(path, *args))
distributed.wrap = lambda model, context: (models.append(model), wrap(model, context))[1]
run = color_syncnet_train.main(argv)
digest = hashlib.sha256()
for name, p in models[0].named_parameters():
    digest.update(name.encode() + p.detach().numpy().tobytes())
with open(os.path.join(probe_dir, "rank%d.json" % run.context.rank), "w") as f:
    json.dump({{"world_size": run.context.world_size, "written": written, "params": digest.hexdigest()}}, f)
"""


def fingerprint(state_dict, names):
    import hashlib

    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + state_dict[name].numpy().tobytes())
    return digest.hexdigest()


def test_two_ranks_with_gloo_train_identical_weights(tmp_path):
    corpus = tmp_path / "corpus"
    make_corpus(str(corpus), speakers=4, videos_per_speaker=2, seconds=1.2)
    write_filelists(str(corpus), str(corpus / "filelists"), val_fraction=0.25, test_fraction=0.25)
    probe, probe_dir, out = tmp_path / "probe.py", tmp_path / "probe", tmp_path / "checkpoints"
    probe.write_text(PROBE.format(repo=str(REPO)))
    probe_dir.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(probe), str(probe_dir),
               "--data_root", str(corpus), "--filelists_dir", str(corpus / "filelists"),
               "--checkpoint_dir", str(out), "--max_steps", "2", "--eval_batches", "2",
               "--hparams", "num_workers=0,syncnet_batch_size=2,syncnet_eval_interval=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    ranks = [json.loads((probe_dir / ("rank%d.json" % r)).read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["params"] == ranks[1]["params"]  # DDP kept the replicas identical
    assert ranks[0]["written"] == ["checkpoint_step000000001.pth", "checkpoint_step000000002.pth"]
    assert ranks[1]["written"] == []
    assert sorted(os.listdir(out)) == ["checkpoint_step000000001.pth", "checkpoint_step000000002.pth",
                                       "tensorboard"]
    assert len(os.listdir(out / "tensorboard")) == 1  # one event file: rank 0's
    # The checkpoint holds the replicas' weights, and they moved between step 1 and step 2.
    saved = torch.load(out / "checkpoint_step000000002.pth", map_location="cpu", weights_only=True)
    first = torch.load(out / "checkpoint_step000000001.pth", map_location="cpu", weights_only=True)
    from models import SyncNet_color

    names = [name for name, _ in SyncNet_color().named_parameters()]
    assert fingerprint(saved["state_dict"], names) == ranks[0]["params"]
    assert fingerprint(first["state_dict"], names) != ranks[0]["params"]
    # 4 train videos over 2 ranks of batch 2: one step per epoch; the eval is printed once, by rank 0.
    assert (saved["global_step"], saved["global_epoch"]) == (2, 2)
    assert result.stdout.count("eval at step 2: loss") == 1


# The same spying for hq_wav2lip_train.py: per wrapped network (generator, then discriminator)
# its fingerprint when wrapped (after DDP's broadcast from rank 0) and after training.
HQ_PROBE = """
import hashlib, json, os, sys
sys.path.insert(0, {repo!r})
import hq_wav2lip_train
import training.run
from training import distributed

def fingerprint(model):
    digest = hashlib.sha256()
    for name, p in model.named_parameters():
        digest.update(name.encode() + p.detach().numpy().tobytes())
    return digest.hexdigest()

probe_dir, argv = sys.argv[1], sys.argv[2:]
written, models = [], []
save_checkpoint, wrap = training.run.save_checkpoint, distributed.wrap
training.run.save_checkpoint = lambda path, *args: (written.append(os.path.basename(path)), save_checkpoint(path, *args))

def spy(model, context):
    wrapped = wrap(model, context)
    models.append((model, fingerprint(model)))
    return wrapped

distributed.wrap = spy
run = hq_wav2lip_train.main(argv)
with open(os.path.join(probe_dir, "rank%d.json" % run.context.rank), "w") as f:
    json.dump({{"world_size": run.context.world_size, "written": written,
               "wrapped": [start for _, start in models], "trained": [fingerprint(m) for m, _ in models]}}, f)
"""


def test_hq_trainer_under_torchrun_keeps_both_networks_identical(tmp_path, check):
    corpus = tmp_path / "corpus"
    make_corpus(str(corpus), speakers=4, videos_per_speaker=2, seconds=1.2)
    write_filelists(str(corpus), str(corpus / "filelists"), val_fraction=0.25, test_fraction=0.25)
    expert = tmp_path / "lipsync_expert.pth"
    torch.save({"state_dict": check.make_state_dict("syncnet_color", 11)}, expert)
    probe, probe_dir, out = tmp_path / "probe.py", tmp_path / "probe", tmp_path / "checkpoints"
    probe.write_text(HQ_PROBE.format(repo=str(REPO)))
    probe_dir.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(probe), str(probe_dir), "--data_root", str(corpus), "--filelists_dir", str(corpus / "filelists"),
               "--checkpoint_dir", str(out), "--syncnet_checkpoint_path", str(expert), "--max_steps", "1",
               "--hparams", "num_workers=0,batch_size=1,checkpoint_interval=1000,eval_interval=1000"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=str(tmp_path), env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    ranks = [json.loads((probe_dir / ("rank%d.json" % r)).read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # Generator and discriminator: identical replicas when wrapped and after the step, which moved them.
    assert ranks[0]["wrapped"] == ranks[1]["wrapped"] and ranks[0]["trained"] == ranks[1]["trained"]
    assert all(a != b for a, b in zip(ranks[0]["wrapped"], ranks[0]["trained"])) and len(ranks[0]["trained"]) == 2
    assert ranks[0]["written"] == ["checkpoint_step000000001.pth", "disc_checkpoint_step000000001.pth"]
    assert ranks[1]["written"] == []
    from models import Wav2Lip, Wav2Lip_disc_qual

    for name, network, params in (("checkpoint_step000000001.pth", Wav2Lip, ranks[0]["trained"][0]),
                                  ("disc_checkpoint_step000000001.pth", Wav2Lip_disc_qual, ranks[0]["trained"][1])):
        saved = torch.load(out / name, map_location="cpu", weights_only=True)
        assert fingerprint(saved["state_dict"], [n for n, _ in network().named_parameters()]) == params
        assert (saved["global_step"], saved["global_epoch"]) == (1, 0)
