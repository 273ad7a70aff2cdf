"""Train the Wav2Lip generator with the expert lip-sync discriminator and the visual-quality
discriminator (the paper's Wav2Lip + GAN).

    python hq_wav2lip_train.py --data_root lrs2_preprocessed/ --checkpoint_dir checkpoints/wav2lip_gan/ \
        --syncnet_checkpoint_path checkpoints/lipsync_expert.pth
    torchrun --nproc_per_node 4 hq_wav2lip_train.py ...         # DistributedDataParallel, one GPU each

Resume with --checkpoint_path and --disc_checkpoint_path; override hparams with --hparams name=value,...
"""
from training import generator
from training.run import build_parser, parse_args, run_main

RECIPE = generator.Recipe(hq=True, betas=(0.5, 0.999), raised_syncnet_wt=0.03, eval_at_first_step=False)


def main(argv=None):
    parser = build_parser("Train Wav2Lip with the visual quality discriminator", eval_batches=300,
                          syncnet=True, disc=True)
    return run_main(lambda run: generator.train(run, RECIPE), parse_args(parser, argv))


if __name__ == "__main__":
    main()
