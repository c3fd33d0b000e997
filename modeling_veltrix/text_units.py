"""Text state units: UTF-8 bytes (no vocabulary to download) -> a small transformer -> `U_text` resampled units, and
the light byte-level caption head that reads text back from the text subspace (DESIGN.md §3, §6).

Byte-level modelling follows ByT5 (Xue et al. 2022); the resampler is the learned-query cross-attention of
Perceiver / Flamingo. Byte 0 never occurs in text, so it is the padding token and the head's "end of caption".
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BYTE_VOCAB_SIZE = 256
PAD_BYTE = 0


def byte_tokenize(texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 bytes of each text, truncated to `max_length` and 0-padded.

    Returns:
        `input_ids (N, max_length)` int64 in [1, 255] on text and 0 on padding, `attention_mask (N, max_length)`
        int64 (1 on text).
    """
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"`max_length` must be an int >= 1, got {max_length!r}.")
    input_ids = np.zeros((len(texts), max_length), dtype=np.int64)
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"`texts[{row}]` must be a str, got {type(text).__name__}.")
        encoded = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)[:max_length]
        if (encoded == PAD_BYTE).any():
            raise ValueError(f"`texts[{row}]` must not contain NUL bytes (byte 0 is the padding), got {text!r}.")
        input_ids[row, : len(encoded)] = encoded
    return input_ids, (input_ids != PAD_BYTE).astype(np.int64)


def byte_detokenize(input_ids: torch.Tensor) -> list[str]:
    """`(N, L)` byte ids -> N strings, each cut at its first padding byte (invalid UTF-8 is replaced)."""
    texts = []
    for row in input_ids.tolist():
        end = row.index(PAD_BYTE) if PAD_BYTE in row else len(row)
        texts.append(bytes(row[:end]).decode("utf-8", errors="replace"))
    return texts


class VeltrixTextUnitEncoder(nn.Module):
    """Bytes `(N, L)` -> bounded text units `(N, U_text, unit_dim)`.

    Byte embedding + learned positions -> pre-norm transformer encoder over the caption's bytes -> `num_units` learned
    queries cross-attend to the (unpadded) bytes -> LayerNorm -> linear -> `tanh`.
    """

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        max_length: int,
        num_units: int,
        unit_dim: int,
        eps: float,
    ):
        super().__init__()
        self.byte_embedding = nn.Embedding(BYTE_VOCAB_SIZE, hidden_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, max_length, hidden_size))
        layer = nn.TransformerEncoderLayer(
            hidden_size, num_heads, 2 * hidden_size, dropout=0.0, batch_first=True, norm_first=True, layer_norm_eps=eps
        )
        # No nested tensors: they are a fast path for inference that skips pre-norm layers anyway and warns.
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.queries = nn.Parameter(torch.zeros(1, num_units, hidden_size))
        self.query_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.context_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        self.mlp = nn.Sequential(
            nn.LayerNorm(hidden_size, eps=eps),
            nn.Linear(hidden_size, 2 * hidden_size),
            nn.GELU(),
            nn.Linear(2 * hidden_size, hidden_size),
        )
        self.unit_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.unit_proj = nn.Linear(hidden_size, unit_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`input_ids`, `attention_mask` `(N, L)` (every row with at least one token) -> units `(N, U_text, D_text)`."""
        padding = attention_mask == 0  # (N, L), True where the attention must not look
        tokens = self.byte_embedding(input_ids) + self.position_embedding[:, : input_ids.shape[1]]
        tokens = self.transformer(tokens, src_key_padding_mask=padding)
        context = self.context_norm(tokens)
        queries = self.queries.expand(input_ids.shape[0], -1, -1)
        attended, _ = self.attention(
            self.query_norm(queries), context, context, key_padding_mask=padding, need_weights=False
        )
        queries = queries + attended
        queries = queries + self.mlp(queries)
        return torch.tanh(self.unit_proj(self.unit_norm(queries)))


class VeltrixCaptionHead(nn.Module):
    """The light byte-level head `D_text`: text units `(N, U_text, unit_dim)` -> caption bytes, autoregressive.

    A small pre-norm transformer decoder: causal self-attention over the bytes so far (a learned start token first)
    and cross-attention to the units. Trained by teacher forcing (`forward`); `generate` decodes greedily until the
    padding byte, which ends a caption.
    """

    def __init__(self, unit_dim: int, hidden_size: int, num_heads: int, num_layers: int, max_length: int, eps: float):
        super().__init__()
        self.max_length = max_length
        self.unit_proj = nn.Linear(unit_dim, hidden_size)
        self.byte_embedding = nn.Embedding(BYTE_VOCAB_SIZE + 1, hidden_size)  # + the start token
        self.position_embedding = nn.Parameter(torch.zeros(1, max_length, hidden_size))
        layer = nn.TransformerDecoderLayer(
            hidden_size, num_heads, 2 * hidden_size, dropout=0.0, batch_first=True, norm_first=True, layer_norm_eps=eps
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers)
        self.out_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.to_bytes = nn.Linear(hidden_size, BYTE_VOCAB_SIZE)

    def _logits(self, memory: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Projected units `(N, U_text, H)` and the inputs so far `(N, l)` (start token first) -> `(N, l, 256)`."""
        length = previous.shape[1]
        tokens = self.byte_embedding(previous) + self.position_embedding[:, :length]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=previous.device, dtype=tokens.dtype)
        hidden = self.decoder(tokens, memory, tgt_mask=causal, tgt_is_causal=True)
        return self.to_bytes(self.out_norm(hidden))

    def forward(self, units: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: units `(N, U_text, unit_dim)`, target bytes `(N, L)` -> logits `(N, L, 256)`, position
        `i` predicted from the bytes before it."""
        start = torch.full_like(input_ids[:, :1], BYTE_VOCAB_SIZE)
        return self._logits(self.unit_proj(units), torch.cat([start, input_ids[:, :-1]], dim=1))

    @torch.no_grad()
    def generate(self, units: torch.Tensor) -> torch.Tensor:
        """Greedy decoding: units `(N, U_text, unit_dim)` -> bytes `(N, max_length)`, 0 after each caption's end."""
        memory = self.unit_proj(units)
        previous = torch.full((units.shape[0], 1), BYTE_VOCAB_SIZE, dtype=torch.long, device=units.device)
        ended = torch.zeros(units.shape[0], dtype=torch.bool, device=units.device)
        generated = []
        for _ in range(self.max_length):
            next_byte = self._logits(memory, previous)[:, -1].argmax(-1).masked_fill(ended, PAD_BYTE)
            generated.append(next_byte)
            ended |= next_byte == PAD_BYTE
            if bool(ended.all()):
                break
            previous = torch.cat([previous, next_byte[:, None]], dim=1)
        ids = torch.stack(generated, dim=1)
        return F.pad(ids, (0, self.max_length - ids.shape[1]), value=PAD_BYTE)


def caption_targets(input_ids: torch.Tensor) -> torch.Tensor:
    """Byte targets `(N, L)` of the caption head: the caption and its first padding byte (its end); later padding
    is `-100`, ignored by the cross-entropy."""
    padding = input_ids == PAD_BYTE
    after_end = padding.cumsum(-1) > 1  # every padding byte past the first
    return input_ids.masked_fill(after_end & padding, -100)


__all__ = ["VeltrixCaptionHead", "VeltrixTextUnitEncoder", "byte_detokenize", "byte_tokenize", "caption_targets"]
