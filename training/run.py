"""What every trainer does around its training step: command line, distributed set-up, data
loaders, resuming, the step/epoch counters, checkpoints, evaluation batches and logging.

Only rank 0 prints, writes checkpoints, sample images and TensorBoard events; every rank
loads checkpoints and takes part in the metric reductions.
"""
import argparse
import os
import random
import re

import numpy as np
import torch
from tqdm import tqdm

from hparams import add_hparams_argument, apply_overrides, hparams as hp
from models.checkpoint import CheckpointError, checkpoint_name, load_weights, save_checkpoint
from training import distributed
from training.data import DataError, make_loader, read_filelist

SEED = 1234


def build_parser(description, eval_batches, syncnet=False, disc=False):
    """The original trainers' options plus --filelists_dir, --max_steps, --eval_batches and --hparams."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data_root", required=True, help="Root folder of the preprocessed LRS2 dataset")
    parser.add_argument("--checkpoint_dir", required=True, help="Save checkpoints to this directory")
    parser.add_argument("--checkpoint_path", default=None, help="Resume from this checkpoint")
    if syncnet:
        parser.add_argument("--syncnet_checkpoint_path", required=True,
                            help="Load the pre-trained Expert discriminator")
    if disc:
        parser.add_argument("--disc_checkpoint_path", default=None,
                            help="Resume the visual-quality discriminator from this checkpoint")
    parser.add_argument("--filelists_dir", default="filelists", help="Folder holding train.txt and val.txt")
    parser.add_argument("--max_steps", type=int, default=None,
                        help="stop (with a checkpoint) at this global step; default: train for hparams.nepochs")
    parser.add_argument("--eval_batches", type=int, default=eval_batches,
                        help="batches per evaluation (default %(default)s, as the original)")
    add_hparams_argument(parser)
    return parser


def parse_args(parser, argv):
    args = parser.parse_args(argv)
    apply_overrides(args, parser)
    return args


def fail(error):
    """Exit with the error's one-line message (a DataLoader worker's error ends its traceback)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    message = lines[-1] if lines else type(error).__name__
    raise SystemExit("error: %s" % re.sub(r"^[\w.]*%s: " % type(error).__name__, "", message))


class TrainingRun:
    """The state one training session shares between its loop and its helpers."""

    def __init__(self, args):
        self.args = args
        self.context = distributed.setup()
        self.device = self.context.device
        self.is_main = self.context.is_main
        self.checkpoint_dir = args.checkpoint_dir
        self.global_step = 0
        self.global_epoch = 0
        self.saved_step = None
        self.writer = None
        self.seed()
        if self.is_main:
            os.makedirs(self.checkpoint_dir, exist_ok=True)
            self.writer = _tensorboard_writer(os.path.join(self.checkpoint_dir, "tensorboard"))

    # ---------------------------------------------------------------- data
    def loaders(self, dataset_class, batch_size):
        """Train and val loaders over the filelists, each rank drawing from its own videos."""
        splits = []
        for split in ("train", "val"):
            folders = read_filelist(self.args.data_root, self.args.filelists_dir, split)
            dataset = dataset_class(folders, split, progress=self.is_main)
            self.log(dataset.summary)
            splits.append(dataset)
        train_set, val_set = splits
        workers = hp.num_workers
        common = dict(rank=self.context.rank, world_size=self.context.world_size,
                      pin_memory=self.device.type == "cuda")
        return (make_loader(train_set, batch_size, num_workers=workers, seed=SEED, **common),
                make_loader(val_set, batch_size, num_workers=min(workers, 4), seed=SEED + 1, **common))

    def seed(self):
        """Different random draws on every rank and after every resume, reproducible given both."""
        seed = SEED + 1000 * self.global_step + self.context.rank
        random.seed(seed)
        np.random.seed(seed % 2 ** 32)
        torch.manual_seed(seed)

    # ---------------------------------------------------------------- checkpoints
    def resume(self, model, optimizer, path, what):
        """Load weights and optimizer state; the generator/expert checkpoint also sets step and epoch."""
        checkpoint = load_weights(model, path, what=what)
        if optimizer is not None and checkpoint.get("optimizer") is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
        self.log("resumed %s from %s (step %s, epoch %s)" % (what, path, checkpoint.get("global_step"),
                                                           checkpoint.get("global_epoch")))
        return checkpoint

    def restore_counters(self, checkpoint):
        self.global_step = int(checkpoint.get("global_step", 0))
        self.global_epoch = int(checkpoint.get("global_epoch", 0))

    def save(self, model, optimizer, prefix=""):
        if not self.is_main:
            return
        path = os.path.join(self.checkpoint_dir, checkpoint_name(self.global_step, prefix))
        save_checkpoint(path, model, optimizer if hp.save_optimizer_state else None,
                        self.global_step, self.global_epoch)
        self.saved_step = self.global_step
        self.log("saved checkpoint %s" % path)

    # ---------------------------------------------------------------- iteration
    def batches(self, loader):
        """Training batches epoch after epoch, until hparams.nepochs or --max_steps.

        The loop body advances global_step; global_epoch advances when an epoch is exhausted.
        """
        self.seed()
        while self.global_epoch < hp.nepochs:
            loader.sampler.set_epoch(self.global_epoch)
            self.running, self.running_steps = {}, 0
            self.bar = tqdm(loader, desc="epoch %d" % self.global_epoch, disable=not self.is_main,
                            dynamic_ncols=True)
            for batch in self.bar:
                if self.finished():
                    self.bar.close()
                    return
                yield batch
            self.global_epoch += 1
            if self.finished():
                return

    def finished(self):
        return self.args.max_steps is not None and self.global_step >= self.args.max_steps

    def eval_batches(self, loader):
        """This rank's share of --eval_batches validation batches, cycling over the loader."""
        remaining = -(-self.args.eval_batches // self.context.world_size)
        epoch = 0
        while remaining > 0:
            loader.sampler.set_epoch(epoch)
            for batch in loader:
                yield batch
                remaining -= 1
                if remaining == 0:
                    return
            epoch += 1

    # ---------------------------------------------------------------- logging
    def log(self, message):
        if self.is_main:
            tqdm.write(message)

    def log_step(self, losses):
        """Reduce this step's losses over ranks; show the epoch's running means and log to TensorBoard."""
        losses = distributed.mean_over_ranks(losses, 1, self.context)
        for name, value in losses.items():
            self.running[name] = self.running.get(name, 0.0) + value
        self.running_steps += 1
        if self.is_main:
            self.bar.set_postfix_str(", ".join("%s %.4f" % (k, v / self.running_steps)
                                               for k, v in self.running.items()), refresh=False)
        self.scalars("train", losses)

    def log_eval(self, totals, count):
        """Mean of evaluation losses summed over `count` batches on each rank; printed and logged."""
        means = distributed.mean_over_ranks(totals, count, self.context)
        self.log("eval at step %d: %s" % (self.global_step, ", ".join("%s %.4f" % kv for kv in means.items())))
        self.scalars("eval", means)
        return means

    def scalars(self, prefix, values):
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar("%s/%s" % (prefix, name), value, self.global_step)

    def close(self):
        if self.writer is not None:
            self.writer.close()
        distributed.cleanup()


def _tensorboard_writer(log_dir):
    """A TensorBoard writer, or None when tensorboard is not installed (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir)


def run_main(train, args):
    """Run `train(run)`, turning bad input into a one-line error, always releasing the process group."""
    run = None
    try:
        run = TrainingRun(args)
        train(run)
        return run
    except (DataError, CheckpointError) as error:
        fail(error)
    finally:
        if run is not None:
            run.close()

