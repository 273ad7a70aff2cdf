"""Train the Wav2Lip generator against a frozen, pre-trained expert lip-sync discriminator.

    python wav2lip_train.py --data_root lrs2_preprocessed/ --checkpoint_dir checkpoints/wav2lip/ \
        --syncnet_checkpoint_path checkpoints/lipsync_expert.pth
    torchrun --nproc_per_node 4 wav2lip_train.py ...            # DistributedDataParallel, one GPU each

Resume with --checkpoint_path; override any hparams.py value with --hparams name=value,...
"""
from training import generator
from training.run import build_parser, parse_args, run_main

# Without the image GAN a lesser sync weight is sufficient.
RECIPE = generator.Recipe(hq=False, betas=(0.9, 0.999), raised_syncnet_wt=0.01, eval_at_first_step=True)


def main(argv=None):
    parser = build_parser("Train Wav2Lip without the visual quality discriminator", eval_batches=700,
                          syncnet=True)
    return run_main(lambda run: generator.train(run, RECIPE), parse_args(parser, argv))


if __name__ == "__main__":
    main()
