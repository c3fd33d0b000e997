"""Text state units: UTF-8 bytes (no vocabulary to download) -> a small transformer -> `U_text` resampled units, and
the light byte-level caption head that reads text back from the text subspace (DESIGN.md §3, §6).

Byte-level modelling follows ByT5 (Xue et al. 2022); the resampler is the learned-query cross-attention of
Perceiver / Flamingo. Byte 0 never occurs in text, so it is the padding token and the head's "end of caption".
"""

import numpy as np
import torch
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
    """The light byte-level head `D_text`: text units `(N, U_text, unit_dim)` -> byte logits `(N, L, 256)`.

    Non-autoregressive: one learned query per byte position cross-attends to the units, then an MLP; all `L` bytes
    are predicted in one pass (templated captions are short and low-entropy, so no left-to-right decoding is needed).
    """

    def __init__(self, unit_dim: int, hidden_size: int, num_heads: int, max_length: int, eps: float):
        super().__init__()
        self.unit_proj = nn.Linear(unit_dim, hidden_size)
        self.position_queries = nn.Parameter(torch.zeros(1, max_length, hidden_size))
        self.query_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)
        # Self-attention over byte positions lets neighbouring bytes agree on which template they spell.
        layer = nn.TransformerEncoderLayer(
            hidden_size, num_heads, 2 * hidden_size, dropout=0.0, batch_first=True, norm_first=True, layer_norm_eps=eps
        )
        self.refine = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.to_bytes = nn.Linear(hidden_size, BYTE_VOCAB_SIZE)

    def forward(self, units: torch.Tensor) -> torch.Tensor:
        """`(N, U_text, unit_dim)` -> logits `(N, L, 256)`."""
        context = self.unit_proj(units)
        queries = self.position_queries.expand(units.shape[0], -1, -1)
        attended, _ = self.attention(self.query_norm(queries), context, context, need_weights=False)
        return self.to_bytes(self.out_norm(self.refine(queries + attended)))


__all__ = ["VeltrixCaptionHead", "VeltrixTextUnitEncoder", "byte_detokenize", "byte_tokenize"]
