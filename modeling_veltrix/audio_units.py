"""Audio features `B ∈ R^{K×V}` per step: the log-mel spectrogram of a step's waveform window, projected to `V`
dimensions and quantized by a residual vector quantizer with `K` codebooks of dimension `V` (SoundStream, Zeghidour
et al. 2021), from `vector-quantize-pytorch`.

A step's features are the `K` selected code vectors (one per codebook, their sum approximates the projected log-mel);
its codes are their `K` indices. `features_from_codes` and `nearest_codes` convert between the two, so a model accepts
either `audio_codes (B, T, K)` or `audio_features (B, T, K, V)`.

The mel filterbank and STFT are computed here with `torch.stft` (HTK mel scale, triangular filters, as in
`torchaudio.functional.melscale_fbanks(norm=None, mel_scale="htk")`) because torchaudio pins a torch version.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from vector_quantize_pytorch import ResidualVQ, VectorQuantize
from vector_quantize_pytorch.vector_quantize_pytorch import Codebook

# Floor of the mel power before the log: -40 dB below a full-scale tone's band power, and what silence maps to.
LOG_MEL_FLOOR = 1e-4


def hz_to_mel(frequency: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + frequency / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(num_mels: int, n_fft: int, sample_rate: int) -> torch.Tensor:
    """Triangular HTK-mel filters from 0 Hz to Nyquist: `(n_fft // 2 + 1, num_mels)`, peak 1 each."""
    bins = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    top = 2595.0 * math.log10(1.0 + sample_rate / 2 / 700.0)  # a Python float: also works under a meta device
    edges = mel_to_hz(torch.linspace(0.0, top, num_mels + 2, dtype=torch.float64))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]  # (M,)
    rising = (bins[:, None] - lower) / (centre - lower)
    falling = (upper - bins[:, None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def log_mel_spectrogram(waveform: torch.Tensor, filterbank: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """`(N, S)` waveform -> `(N, F, M)` log-mel, `F = S // hop_length + 1` centred Hann frames, rescaled so that
    silence is 0 and a full-scale tone is about 1 (`log(power + floor) / -log(floor) + 1`)."""
    # In float32 (or float64) whatever the model's precision: CPU has no half-precision FFT, and the power spans
    # more decades than float16 holds.
    compute = torch.float32 if waveform.dtype in (torch.float16, torch.bfloat16) else waveform.dtype
    samples = waveform.to(compute)
    window = torch.hann_window(n_fft, dtype=compute, device=waveform.device)
    spectrum = torch.stft(samples, n_fft, hop_length=hop_length, window=window, center=True, return_complex=True)
    power = spectrum.abs().square() / window.square().sum()  # (N, n_fft // 2 + 1, F), a tone's peak bin ~ A² n_fft/4
    mel = power.transpose(1, 2) @ filterbank.to(compute)  # (N, F, M)
    return (torch.log(mel + LOG_MEL_FLOOR) / -math.log(LOG_MEL_FLOOR) + 1.0).to(waveform.dtype)


# The `vector_quantize_pytorch` modules of the tokenizer's quantizer that hold buffers of their own.
QUANTIZER_MODULES = (ResidualVQ, VectorQuantize, Codebook)


@torch.no_grad()
def init_quantizer_buffers_(module: nn.Module) -> None:
    """Sets the buffers that `module`, one of `QUANTIZER_MODULES`, holds itself (not its children's) to their values
    at construction, with `transformers.initialization` (which leaves the tensors loaded by `from_pretrained` alone).

    `vector_quantize_pytorch` fills them only in its constructors, while `from_pretrained` builds models on the meta
    device and loads only persistent tensors: the non-persistent ones (`zero`, `beam_score_weights`) exist only
    through this.
    """
    if isinstance(module, ResidualVQ):
        init.ones_(module.beam_score_weights)  # equal weights: the tokenizer gives no `beam_score_quantizer_weights`
    elif isinstance(module, VectorQuantize):
        init.zeros_(module.zero)
    elif isinstance(module, Codebook):
        init.kaiming_uniform_(module.embed)  # `vector_quantize_pytorch.uniform_init`
        init.copy_(module.embed_avg, module.embed)
        init.ones_(module.cluster_size)
        init.constant_(module.initted, True)  # no k-means initialisation: the random codebooks are final
    else:
        expected = [kind.__name__ for kind in QUANTIZER_MODULES]
        raise ValueError(f"`module` must be one of {expected}, got {type(module).__name__}.")


class VeltrixAudioTokenizer(nn.Module):
    """Waveform windows `(N, S)` -> audio codes `(N, K)` and features `(N, K, V)`.

    log-mel `(N, F, M)` -> flatten -> linear -> `V` -> `ResidualVQ` (K codebooks of `codebook_size` codes of dim
    V, EMA-updated). Trained by reconstructing the log-mel from the quantized vector through a linear map, plus the
    quantizer's commitment loss.
    """

    def __init__(
        self,
        sample_rate: int,
        window_size: int,
        n_fft: int,
        hop_length: int,
        num_mels: int,
        num_codebooks: int,
        codebook_dim: int,
        codebook_size: int,
    ):
        super().__init__()
        self.sample_rate, self.window_size, self.n_fft, self.hop_length = sample_rate, window_size, n_fft, hop_length
        self.num_mels = num_mels
        self.num_codebooks, self.codebook_dim, self.codebook_size = num_codebooks, codebook_dim, codebook_size
        # Persistent, so that a checkpoint carries the filters it was trained with; `_init_weights` recomputes them.
        self.register_buffer("filterbank", self.mel_filterbank())
        mel_features = (window_size // hop_length + 1) * num_mels
        self.mel_shape = (window_size // hop_length + 1, num_mels)
        self.to_latent = nn.Linear(mel_features, codebook_dim)
        self.quantizer = ResidualVQ(dim=codebook_dim, num_quantizers=num_codebooks, codebook_size=codebook_size)
        self.to_mel = nn.Linear(codebook_dim, mel_features)

    def mel_filterbank(self) -> torch.Tensor:
        """This tokenizer's filters `(n_fft // 2 + 1, num_mels)`, in the default dtype (the model's while it is built,
        as for its other tensors) and on the default device."""
        return mel_filterbank(self.num_mels, self.n_fft, self.sample_rate).to(torch.get_default_dtype())

    @property
    def codebooks(self) -> torch.Tensor:
        """`(K, codebook_size, V)`."""
        return self.quantizer.codebooks

    def log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """`(N, S)` -> `(N, F, M)`."""
        return log_mel_spectrogram(waveform, self.filterbank, self.n_fft, self.hop_length)

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(N, S)` -> codes `(N, K)` int64, features `(N, K, V)` (detached code vectors), loss (scalar): log-mel
        reconstruction MSE + commitment."""
        mel = self.log_mel(waveform)
        latent = self.to_latent(mel.flatten(1))[:, None]  # (N, 1, V): one quantized vector per window
        quantized, codes, commitment = self.quantizer(latent)
        codes = codes[:, 0]  # (N, K)
        reconstruction = self.to_mel(quantized[:, 0])
        loss = F.mse_loss(reconstruction, mel.flatten(1)) + commitment.sum()
        return codes, self.features_from_codes(codes).detach(), loss

    def features_from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """`(..., K)` int codes -> `(..., K, V)` code vectors."""
        books = self.codebooks  # (K, C, V)
        index = torch.arange(self.num_codebooks, device=codes.device)
        return books[index, codes]

    def nearest_codes(self, features: torch.Tensor) -> torch.Tensor:
        """`(..., K, V)` -> `(..., K)`: per codebook, the index of the code nearest to the feature (Euclidean)."""
        distances = (features.unsqueeze(-2) - self.codebooks).square().sum(-1)  # (..., K, C)
        return distances.argmin(-1)


__all__ = [
    "QUANTIZER_MODULES",
    "VeltrixAudioTokenizer",
    "init_quantizer_buffers_",
    "log_mel_spectrogram",
    "mel_filterbank",
]
