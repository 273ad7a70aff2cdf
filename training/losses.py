"""The losses of the Wav2Lip paper, as the original trainers compute them."""
import torch
import torch.nn.functional as F


def cosine_loss(audio_embedding, face_embedding, label):
    """BCE of the embeddings' cosine similarity against `label` (B, 1).

    The cosine is used directly as a probability: valid because SyncNet's embeddings are
    non-negative (final ReLU), so it lies in [0, 1].
    """
    similarity = F.cosine_similarity(audio_embedding, face_embedding)
    return F.binary_cross_entropy(similarity.unsqueeze(1), label)


def expert_sync_loss(expert, mel, generated):
    """How far generated frames (B, 3, T, H, W) are from in sync with `mel`, judged by the expert."""
    lower_halves = generated[:, :, :, generated.size(3) // 2:]
    # The expert reads the T lower halves stacked on channels (channel 3*t + c).
    faces = torch.cat([lower_halves[:, :, t] for t in range(lower_halves.size(2))], dim=1)
    audio_embedding, face_embedding = expert(mel, faces)
    label = torch.ones(len(faces), 1, device=faces.device)
    return cosine_loss(audio_embedding, face_embedding, label)


def real_fake_loss(prediction, is_real):
    """BCE of the visual-quality discriminator's verdicts against all-real or all-fake."""
    target = torch.ones_like(prediction) if is_real else torch.zeros_like(prediction)
    return F.binary_cross_entropy(prediction, target)
