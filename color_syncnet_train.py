"""Train the expert lip-sync discriminator (SyncNet_color) on a preprocessed LRS2-style corpus.

    python color_syncnet_train.py --data_root lrs2_preprocessed/ --checkpoint_dir checkpoints/expert/
    torchrun --nproc_per_node 4 color_syncnet_train.py ...      # DistributedDataParallel, one GPU each

Resume with --checkpoint_path; override any hparams.py value with --hparams name=value,...
"""
from training import expert
from training.run import build_parser, parse_args, run_main


def main(argv=None):
    parser = build_parser("Train the expert lip-sync discriminator", eval_batches=1400)
    return run_main(expert.train, parse_args(parser, argv))


if __name__ == "__main__":
    main()
