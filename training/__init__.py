"""Shared pieces of the three Wav2Lip trainers: data, losses, distributed set-up, the run
(resume, checkpoints, evaluation, logging) and the two training loops (expert, generator)."""
