"""Training loop of the expert lip-sync discriminator SyncNet_color (color_syncnet_train.py)."""
import torch
from torch import optim

from hparams import hparams as hp
from models import SyncNet_color
from training import distributed
from training.data import SyncNetDataset
from training.losses import cosine_loss


def train(run):
    train_loader, val_loader = run.loaders(SyncNetDataset, hp.syncnet_batch_size)
    device = run.device
    model = SyncNet_color().to(device)
    optimizer = optim.Adam([p for p in model.parameters() if p.requires_grad], lr=hp.syncnet_lr)
    if run.args.checkpoint_path is not None:
        run.restore_counters(run.resume(model, optimizer, run.args.checkpoint_path, "SyncNet_color"))
    trained = distributed.wrap(model, run.context)

    for batch in run.batches(train_loader):
        losses = train_step(trained, optimizer, batch, device)
        run.global_step += 1
        run.log_step(losses)
        if run.global_step == 1 or run.global_step % hp.syncnet_checkpoint_interval == 0:
            run.save(model, optimizer)
        if run.global_step % hp.syncnet_eval_interval == 0:
            evaluate(run, model, val_loader)
    if run.saved_step != run.global_step:
        run.save(model, optimizer)


def train_step(model, optimizer, batch, device):
    face, mel, label = (t.to(device, non_blocking=True) for t in batch)
    model.train()
    optimizer.zero_grad()
    audio_embedding, face_embedding = model(mel, face)
    loss = cosine_loss(audio_embedding, face_embedding, label)
    loss.backward()
    optimizer.step()
    return {"loss": loss.item()}


@torch.no_grad()
def evaluate(run, model, val_loader):
    """Mean BCE over --eval_batches validation batches (all ranks together)."""
    model.eval()
    total, count = 0.0, 0
    for face, mel, label in run.eval_batches(val_loader):
        audio_embedding, face_embedding = model(mel.to(run.device), face.to(run.device))
        total += cosine_loss(audio_embedding, face_embedding, label.to(run.device)).item()
        count += 1
    return run.log_eval({"loss": total}, count)["loss"]
