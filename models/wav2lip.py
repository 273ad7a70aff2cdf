"""The Wav2Lip generator and its visual-quality discriminator (used by HQ training)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.conv import Conv2dBlock, ConvTranspose2dBlock, NoNormConv2dBlock, residual_block, roll_time, unroll_time


class Wav2Lip(nn.Module):
    """Masked target + reference face (6 channels, 96x96) and a mel window (1x80x16) -> face (3x96x96).

    forward(audio, face) takes frames, audio (B,1,80,16) and face (B,6,96,96), or sequences,
    audio (B,T,1,80,16) and face (B,6,T,96,96), returning (B,3,96,96) or (B,3,T,96,96).
    """

    def __init__(self):
        super().__init__()
        # Stage outputs: 16@96, 32@48, 64@24, 128@12, 256@6, 512@3, 512@1; all kept as skips.
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(Conv2dBlock(6, 16, 7, 1, 3)),
            nn.Sequential(Conv2dBlock(16, 32, 3, 2, 1), residual_block(32), residual_block(32)),
            nn.Sequential(Conv2dBlock(32, 64, 3, 2, 1), residual_block(64), residual_block(64), residual_block(64)),
            nn.Sequential(Conv2dBlock(64, 128, 3, 2, 1), residual_block(128), residual_block(128)),
            nn.Sequential(Conv2dBlock(128, 256, 3, 2, 1), residual_block(256), residual_block(256)),
            nn.Sequential(Conv2dBlock(256, 512, 3, 2, 1), residual_block(512)),
            nn.Sequential(Conv2dBlock(512, 512, 3, 1, 0), Conv2dBlock(512, 512, 1, 1, 0)),
        ])
        # 80x16 mel window -> 27x16 -> 9x6 -> 3x3 -> 1x1, 512 channels.
        self.audio_encoder = nn.Sequential(
            Conv2dBlock(1, 32, 3, 1, 1), residual_block(32), residual_block(32),
            Conv2dBlock(32, 64, 3, (3, 1), 1), residual_block(64), residual_block(64),
            Conv2dBlock(64, 128, 3, 3, 1), residual_block(128), residual_block(128),
            Conv2dBlock(128, 256, 3, (3, 2), 1), residual_block(256),
            Conv2dBlock(256, 512, 3, 1, 0),
            Conv2dBlock(512, 512, 1, 1, 0),
        )
        # Input channels count the previous stage's output plus the concatenated encoder skip.
        self.face_decoder_blocks = nn.ModuleList([
            nn.Sequential(Conv2dBlock(512, 512, 1, 1, 0)),
            nn.Sequential(ConvTranspose2dBlock(1024, 512, 3, 1, 0), residual_block(512)),
            nn.Sequential(ConvTranspose2dBlock(1024, 512, 3, 2, 1, 1), residual_block(512), residual_block(512)),
            nn.Sequential(ConvTranspose2dBlock(768, 384, 3, 2, 1, 1), residual_block(384), residual_block(384)),
            nn.Sequential(ConvTranspose2dBlock(512, 256, 3, 2, 1, 1), residual_block(256), residual_block(256)),
            nn.Sequential(ConvTranspose2dBlock(320, 128, 3, 2, 1, 1), residual_block(128), residual_block(128)),
            nn.Sequential(ConvTranspose2dBlock(160, 64, 3, 2, 1, 1), residual_block(64), residual_block(64)),
        ])
        self.output_block = nn.Sequential(Conv2dBlock(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1), nn.Sigmoid())

    def forward(self, audio, face):
        if face.dim() == 5:
            out = self.forward_frames(unroll_time(audio, 1), unroll_time(face, 2))
            return roll_time(out, audio.size(0), 2)
        return self.forward_frames(audio, face)

    def forward_frames(self, audio, face):
        """forward on frames only: audio (N,1,80,16), face (N,6,96,96) -> (N,3,96,96)."""
        feats = []
        x = face
        for stage in self.face_encoder_blocks:
            x = stage(x)
            feats.append(x)

        x = self.audio_encoder(audio)
        for stage in self.face_decoder_blocks:
            x = torch.cat([stage(x), feats.pop()], dim=1)  # decoder output first, skip second

        return self.output_block(x)


class Wav2Lip_disc_qual(nn.Module):
    """Visual-quality discriminator: probability that the lower half of each face is real.

    forward(face) takes (B,3,T,96,96) (or frames (N,3,96,96)) and returns (T*B,1), row t*B + b.
    """

    def __init__(self):
        super().__init__()
        # Lower half 48x96 -> 48x48 -> 24 -> 12 -> 6 -> 3 -> 1, 512 channels.
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(NoNormConv2dBlock(3, 32, 7, 1, 3)),
            nn.Sequential(NoNormConv2dBlock(32, 64, 5, (1, 2), 2), NoNormConv2dBlock(64, 64, 5, 1, 2)),
            nn.Sequential(NoNormConv2dBlock(64, 128, 5, 2, 2), NoNormConv2dBlock(128, 128, 5, 1, 2)),
            nn.Sequential(NoNormConv2dBlock(128, 256, 5, 2, 2), NoNormConv2dBlock(256, 256, 5, 1, 2)),
            nn.Sequential(NoNormConv2dBlock(256, 512, 3, 2, 1), NoNormConv2dBlock(512, 512, 3, 1, 1)),
            nn.Sequential(NoNormConv2dBlock(512, 512, 3, 2, 1), NoNormConv2dBlock(512, 512, 3, 1, 1)),
            nn.Sequential(NoNormConv2dBlock(512, 512, 3, 1, 0), NoNormConv2dBlock(512, 512, 1, 1, 0)),
        ])
        self.binary_pred = nn.Sequential(nn.Conv2d(512, 1, 1), nn.Sigmoid())

    def forward(self, face):
        if face.dim() == 5:
            face = unroll_time(face, 2)
        x = face[:, :, face.size(2) // 2:]  # only the mouth region is judged
        for stage in self.face_encoder_blocks:
            x = stage(x)
        return self.binary_pred(x).view(len(x), -1)

    def perceptual_forward(self, false_face):
        """Generator-side loss: BCE of the verdict on generated faces against "real" (1)."""
        pred = self(false_face)
        return F.binary_cross_entropy(pred, torch.ones_like(pred))
