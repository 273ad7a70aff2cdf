"""Training loop of the Wav2Lip generator, without (wav2lip_train.py) or with
(hq_wav2lip_train.py) the visual-quality discriminator."""
import os
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import optim

from hparams import hparams as hp
from models import SyncNet_color, Wav2Lip, Wav2Lip_disc_qual
from models.checkpoint import load_weights
from training import distributed
from training.data import Wav2LipDataset
from training.losses import expert_sync_loss, real_fake_loss

SYNC_LOSS_THRESHOLD = 0.75  # an evaluation's sync loss below this switches the sync loss on


@dataclass
class Recipe:
    """What differs between the two generator trainers."""
    hq: bool  # also train the visual-quality discriminator
    betas: tuple  # Adam betas of the optimisers
    raised_syncnet_wt: float  # syncnet_wt once an evaluation's sync loss is below the threshold
    eval_at_first_step: bool


@dataclass
class Networks:
    """The generator, the frozen expert and (HQ) the discriminator, with their optimisers."""
    model: torch.nn.Module
    optimizer: optim.Optimizer
    expert: torch.nn.Module
    disc: torch.nn.Module = None
    disc_optimizer: optim.Optimizer = None
    generator: torch.nn.Module = None  # `model`, in DistributedDataParallel when distributed
    discriminator: torch.nn.Module = None  # `disc`, likewise

    def wrap(self, context):
        self.generator = distributed.wrap(self.model, context)
        if self.disc is not None:
            self.discriminator = distributed.wrap(self.disc, context)
        return self


def build_networks(recipe, device):
    model = Wav2Lip().to(device)
    nets = Networks(model, optim.Adam([p for p in model.parameters() if p.requires_grad],
                                      lr=hp.initial_learning_rate, betas=recipe.betas),
                    SyncNet_color().to(device))
    nets.expert.requires_grad_(False)
    # The original never switches the expert to eval mode: its BatchNorms use batch statistics.
    nets.expert.train()
    if recipe.hq:
        nets.disc = Wav2Lip_disc_qual().to(device)
        nets.disc_optimizer = optim.Adam([p for p in nets.disc.parameters() if p.requires_grad],
                                         lr=hp.disc_initial_learning_rate, betas=recipe.betas)
    nets.generator, nets.discriminator = nets.model, nets.disc
    return nets


def train(run, recipe):
    train_loader, val_loader = run.loaders(Wav2LipDataset, hp.batch_size)
    args = run.args
    nets = build_networks(recipe, run.device)
    load_weights(nets.expert, args.syncnet_checkpoint_path, what="SyncNet_color")
    run.log("loaded the expert discriminator from %s" % args.syncnet_checkpoint_path)
    if args.checkpoint_path is not None:
        run.restore_counters(run.resume(nets.model, nets.optimizer, args.checkpoint_path, "Wav2Lip"))
    if recipe.hq and args.disc_checkpoint_path is not None:
        run.resume(nets.disc, nets.disc_optimizer, args.disc_checkpoint_path, "Wav2Lip_disc_qual")
    disc_wt = hp.disc_wt if recipe.hq else 0.0

    run.syncnet_wt = hp.syncnet_wt
    if run.global_step > 0:
        # Checkpoints keep the original four keys, so the schedule is re-derived the way it arose.
        update_syncnet_wt(run, recipe, evaluate(run, nets, val_loader, disc_wt))
    nets.wrap(run.context)

    for batch in run.batches(train_loader):
        x, indiv_mels, mel, gt = (t.to(run.device, non_blocking=True) for t in batch)
        losses, g = train_step(nets, x, indiv_mels, mel, gt, run.syncnet_wt, disc_wt)
        if run.is_main and run.global_step % hp.checkpoint_interval == 0:
            save_sample_images(run, x, g, gt)
        run.global_step += 1
        run.log_step(losses)
        if run.global_step == 1 or run.global_step % hp.checkpoint_interval == 0:
            save(run, nets)
        if (recipe.eval_at_first_step and run.global_step == 1) or run.global_step % hp.eval_interval == 0:
            update_syncnet_wt(run, recipe, evaluate(run, nets, val_loader, disc_wt))
    if run.saved_step != run.global_step:
        save(run, nets)


def train_step(nets, x, indiv_mels, mel, gt, syncnet_wt, disc_wt):
    """One optimiser step of the generator (and of the discriminator if any); returns (losses, output)."""
    nets.model.train()
    if nets.disc is not None:
        nets.disc.train()
    nets.optimizer.zero_grad()
    g = nets.generator(indiv_mels, x)
    sync_loss = expert_sync_loss(nets.expert, mel, g) if syncnet_wt > 0 else torch.zeros(())
    perceptual_loss = torch.zeros(())
    if disc_wt > 0:
        # Gradients reaching the discriminator from this loss would be discarded before its own step.
        nets.disc.requires_grad_(False)
        perceptual_loss = nets.disc.perceptual_forward(g)
        nets.disc.requires_grad_(True)
    l1_loss = F.l1_loss(g, gt)
    loss = syncnet_wt * sync_loss + disc_wt * perceptual_loss + (1.0 - syncnet_wt - disc_wt) * l1_loss
    loss.backward()
    nets.optimizer.step()
    losses = {"l1": l1_loss.item(), "sync": sync_loss.item()}

    if nets.disc is not None:
        nets.disc_optimizer.zero_grad()
        disc_real_loss = real_fake_loss(nets.discriminator(gt), is_real=True)
        disc_real_loss.backward()
        disc_fake_loss = real_fake_loss(nets.discriminator(g.detach()), is_real=False)
        disc_fake_loss.backward()
        nets.disc_optimizer.step()
        losses.update(perceptual=perceptual_loss.item(), disc_real=disc_real_loss.item(),
                      disc_fake=disc_fake_loss.item())
    return losses, g


def save(run, nets):
    run.save(nets.model, nets.optimizer)
    if nets.disc is not None:
        run.save(nets.disc, nets.disc_optimizer, prefix="disc_")


def update_syncnet_wt(run, recipe, eval_sync_loss):
    if eval_sync_loss < SYNC_LOSS_THRESHOLD and run.syncnet_wt != recipe.raised_syncnet_wt:
        run.syncnet_wt = recipe.raised_syncnet_wt
        run.log("eval sync loss %.4f < %.2f: syncnet_wt is now %g" % (eval_sync_loss, SYNC_LOSS_THRESHOLD,
                                                                       run.syncnet_wt))


@torch.no_grad()
def evaluate(run, nets, val_loader, disc_wt):
    """Mean losses over --eval_batches validation batches (all ranks together); returns the sync loss."""
    model, expert, disc = nets.model, nets.expert, nets.disc
    model.eval()
    if disc is not None:
        disc.eval()
    totals, count = {}, 0
    for batch in run.eval_batches(val_loader):
        x, indiv_mels, mel, gt = (t.to(run.device, non_blocking=True) for t in batch)
        g = model(indiv_mels, x)
        losses = {"sync": expert_sync_loss(expert, mel, g), "l1": F.l1_loss(g, gt)}
        if disc is not None:
            losses.update(disc_real=real_fake_loss(disc(gt), is_real=True),
                          disc_fake=real_fake_loss(disc(g), is_real=False),
                          perceptual=disc.perceptual_forward(g) if disc_wt > 0 else torch.zeros(()))
        for name, value in losses.items():
            totals[name] = totals.get(name, 0.0) + value.item()
        count += 1
    return run.log_eval(totals, count)["sync"]


def save_sample_images(run, x, g, gt):
    """reference | masked input | generated | ground truth, one jpg per sample and frame."""
    def to_images(t):  # (B, C, T, H, W) in [0, 1] -> (B, T, H, W, C) uint8
        return (t.detach().cpu().numpy().transpose(0, 2, 3, 4, 1) * 255.0).astype(np.uint8)

    x, g, gt = to_images(x), to_images(g), to_images(gt)
    collage = np.concatenate((x[..., 3:], x[..., :3], g, gt), axis=-2)
    folder = os.path.join(run.checkpoint_dir, "samples_step%09d" % run.global_step)
    os.makedirs(folder, exist_ok=True)
    for b, frames in enumerate(collage):
        for t, image in enumerate(frames):
            cv2.imwrite(os.path.join(folder, "%d_%d.jpg" % (b, t)), image)
    if run.writer is not None:
        run.writer.add_image("samples", np.concatenate(collage[0], axis=0)[..., ::-1], run.global_step,
                             dataformats="HWC")
