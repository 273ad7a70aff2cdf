"""SyncNet_color: the expert lip-sync discriminator that embeds a mel window and 5 mouth crops."""
import torch.nn as nn
import torch.nn.functional as F

from models.conv import Conv2dBlock, residual_block


class SyncNet_color(nn.Module):
    """forward(audio (B,1,80,16), face (B,15,48,96)) -> (audio_embedding, face_embedding), each (B,512).

    The face input is the lower halves of 5 consecutive 96x96 crops stacked on channels (3*t + c).
    Both embeddings are L2-normalised and non-negative, so their cosine similarity lies in [0, 1].
    """

    def __init__(self):
        super().__init__()
        # 48x96 -> 46x47 -> 23x24 -> 12x12 -> 6x6 -> 3x3 -> 1x1, 512 channels.
        self.face_encoder = nn.Sequential(
            Conv2dBlock(15, 32, 7, 1, 3),
            Conv2dBlock(32, 64, 5, (1, 2), 1), residual_block(64), residual_block(64),
            Conv2dBlock(64, 128, 3, 2, 1), residual_block(128), residual_block(128), residual_block(128),
            Conv2dBlock(128, 256, 3, 2, 1), residual_block(256), residual_block(256),
            Conv2dBlock(256, 512, 3, 2, 1), residual_block(512), residual_block(512),
            Conv2dBlock(512, 512, 3, 2, 1),
            Conv2dBlock(512, 512, 3, 1, 0),
            Conv2dBlock(512, 512, 1, 1, 0),
        )
        # 80x16 -> 27x16 -> 9x6 -> 3x3 -> 1x1, 512 channels.
        self.audio_encoder = nn.Sequential(
            Conv2dBlock(1, 32, 3, 1, 1), residual_block(32), residual_block(32),
            Conv2dBlock(32, 64, 3, (3, 1), 1), residual_block(64), residual_block(64),
            Conv2dBlock(64, 128, 3, 3, 1), residual_block(128), residual_block(128),
            Conv2dBlock(128, 256, 3, (3, 2), 1), residual_block(256), residual_block(256),
            Conv2dBlock(256, 512, 3, 1, 0),
            Conv2dBlock(512, 512, 1, 1, 0),
        )

    def forward(self, audio, face):
        audio_embedding = F.normalize(self.audio_encoder(audio).flatten(1), p=2, dim=1)
        face_embedding = F.normalize(self.face_encoder(face).flatten(1), p=2, dim=1)
        return audio_embedding, face_embedding
