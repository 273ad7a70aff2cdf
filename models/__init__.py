"""The Wav2Lip networks; state_dict keys, shapes and order match the published checkpoints."""
from models.syncnet import SyncNet_color
from models.wav2lip import Wav2Lip, Wav2Lip_disc_qual

__all__ = ["Wav2Lip", "Wav2Lip_disc_qual", "SyncNet_color"]
