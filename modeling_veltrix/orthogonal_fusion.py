"""Orthogonal direct-sum fusion of time-aligned modality features into one state space
(`seeds/001_e8f38c8536c82ed8.txt`, DESIGN.md §3).

Each modality `m` is embedded by `φ_m` into its own disjoint block of coordinates (`d_m` columns of a unit, in the
first `U_m` unit slots of a step), and one learned orthogonal matrix `Q ∈ O(D)` rotates every unit:

    C_u = Q · [φ_frames(x)_u ; φ_text(x)_u ; φ_audio(x)_u ; z_u]        (z: a latent block, unobserved dynamics)
    C   = Σ_m Q_m φ_m(x_m),   Q_m = Q[:, block m],   S_m = span(Q_m),   S_a ⊥ S_b   since QᵀQ = I

so the decomposition is a projection, `φ_m(x_m) = Q_mᵀ C`, and `x_m = D_m(Q_mᵀ C)` exactly when `φ_m` is linear and
injective (`VeltrixLinearEmbedding.inverse`). `Q` lives on the orthogonal group through `VeltrixOrthogonalMap`, the
dynamic trivialization of `torch.nn.utils.parametrizations.orthogonal` (Cayley or matrix exponential of a skew-symmetric
matrix, Lezcano-Casado 2019) computed in float32, so gradient steps never leave it. Every step and every unit slot is
transformed by the same `Q`, so the map commutes with permutations of time. `canonical_correlation_directions` (CCA via
the SVD of the whitened cross-covariance, Hotelling 1936) gives an optional data-driven initialisation of `Q`
(`VeltrixOrthogonalFusion.cca_initialize_`).
"""

import torch
from torch import nn
from torch.nn.utils import parametrize

from .configuration_veltrix import ORTHOGONAL_MAPS

# Precisions without CPU kernels for QR (`geqrf`) and LU (`lu`, the Cayley map's solve): factorised in float32.
HALF_PRECISIONS = (torch.float16, torch.bfloat16)


def semi_orthogonal(rows: int, columns: int, like: torch.Tensor) -> torch.Tensor:
    """A random `(rows, columns)` matrix with orthonormal rows (`rows <= columns`) or columns, on `like`'s device and
    in its dtype; drawn and factorised in float32, which every device has a QR kernel for."""
    return nn.init.orthogonal_(torch.empty(rows, columns, dtype=torch.float32, device=like.device)).to(like.dtype)


def orthonormalize(matrix: torch.Tensor) -> torch.Tensor:
    """`(D, D)` -> the Q factor of its QR decomposition with `R`'s diagonal made positive, in `matrix`'s dtype: an
    orthogonal matrix maps to itself (up to rounding), any other full-rank one to an orthogonal one. Factorised in
    float32 for half precisions."""
    compute = torch.float32 if matrix.dtype in HALF_PRECISIONS else matrix.dtype
    basis, upper = torch.linalg.qr(matrix.to(compute))
    signs = torch.diagonal(upper).sign()
    return (basis * torch.where(signs == 0, torch.ones_like(signs), signs)).to(matrix.dtype)


class VeltrixLinearEmbedding(nn.Module):
    """A linear `φ_m`: features `(..., in_features)` -> units `(..., num_units, unit_dim)`, with its exact inverse.

    Injective when `num_units * unit_dim >= in_features` and the weight has full column rank; the weight starts
    semi-orthogonal (full rank) and the constructor rejects a too small output.
    """

    def __init__(self, in_features: int, num_units: int, unit_dim: int):
        super().__init__()
        out_features = num_units * unit_dim
        if out_features < in_features:
            raise ValueError(
                f"`num_units * unit_dim` must be >= `in_features` ({in_features}) for an injective embedding, "
                f"got {num_units} * {unit_dim} = {out_features}."
            )
        self.in_features, self.num_units, self.unit_dim = in_features, num_units, unit_dim
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Orthonormal rows and a zero bias: an isometry onto its image, so the inverse is well conditioned from the
        start."""
        with torch.no_grad():
            self.weight.copy_(semi_orthogonal(*self.weight.shape, like=self.weight))
            self.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., num_units, unit_dim)."""
        units = features @ self.weight + self.bias
        return units.reshape(*features.shape[:-1], self.num_units, self.unit_dim)

    def inverse(self, units: torch.Tensor) -> torch.Tensor:
        """(..., num_units, unit_dim) -> (..., in_features): the least-squares preimage, exact on the image.

        Solved in float64 so that the round trip is exact to float32 precision.
        """
        flat = units.flatten(-2).double() - self.bias.double()
        pseudo_inverse = torch.linalg.pinv(self.weight.double())  # (out, in)
        return (flat @ pseudo_inverse).to(units.dtype)


class VeltrixOrthogonalMap(nn.Module):
    """The parametrization of `Q (D, D)`: `Q = B · map(A)`, `A = tril(X) - tril(X)ᵀ` skew-symmetric, `map` the Cayley
    transform `(I - A/2)⁻¹ (I + A/2)` or the matrix exponential, both onto `SO(D)`, and `B` the `base` buffer, an
    orthogonal matrix. It is the dynamic trivialization of `torch.nn.utils.parametrizations.orthogonal` (Lezcano-Casado
    2019) with the same state-dict layout, computed in float32 whatever the storage dtype: CPU has no half-precision
    kernel for the Cayley map's solve.

    Args:
        dim (`int`): `D`.
        orthogonal_map (`str`): `"cayley"` or `"matrix_exp"`.
    """

    def __init__(self, dim: int, orthogonal_map: str):
        super().__init__()
        if orthogonal_map not in ORTHOGONAL_MAPS:
            raise ValueError(f"`orthogonal_map` must be one of {ORTHOGONAL_MAPS}, got {orthogonal_map!r}.")
        self.orthogonal_map = orthogonal_map
        self.register_buffer("base", torch.eye(dim))

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        """`X (D, D)` (the stored `original`) -> `Q (D, D)`, orthogonal, in `X`'s dtype."""
        lower = original.float().tril()
        skew = lower - lower.T
        if self.orthogonal_map == "matrix_exp":
            rotation = torch.matrix_exp(skew)
        else:
            identity = torch.eye(len(skew), device=skew.device)
            rotation = torch.linalg.solve(identity - skew / 2, identity + skew / 2)
        return (self.base.float() @ rotation).to(original.dtype)

    @torch.no_grad()
    def right_inverse(self, rotation: torch.Tensor) -> torch.Tensor:
        """Assigning `Q (D, D)` stores it (`orthonormalize`d) as `base` and returns `X = 0`, so that `map(A) = I`."""
        if rotation.shape != self.base.shape:
            raise ValueError(f"`rotation` must have shape {tuple(self.base.shape)}, got {tuple(rotation.shape)}.")
        self.base.copy_(orthonormalize(rotation))
        return torch.zeros_like(rotation)


class VeltrixOrthogonalFusion(nn.Module):
    """`C = Σ_m Q_m φ_m(x_m)` over named blocks of a unit; `decompose(C)` returns each block's part.

    Args:
        block_sizes (`dict[str, int]`): width `d_m` of each block, in the order the blocks take in a unit; the unit
            width is `D = Σ_m d_m`.
        orthogonal_map (`str`, defaults to `"cayley"`): `"cayley"` or `"matrix_exp"`, the map from skew-symmetric
            matrices onto `SO(D)` that parametrizes `Q`.

    `Q` starts at the identity (each block on its own coordinates) and is learned; `cca_initialize_` sets it from
    data.
    """

    def __init__(self, block_sizes: dict[str, int], orthogonal_map: str = "cayley"):
        super().__init__()
        if not block_sizes or any(not isinstance(w, int) or w <= 0 for w in block_sizes.values()):
            raise ValueError(f"`block_sizes` must map block names to widths > 0, got {block_sizes!r}.")
        if orthogonal_map not in ORTHOGONAL_MAPS:
            raise ValueError(f"`orthogonal_map` must be one of {ORTHOGONAL_MAPS}, got {orthogonal_map!r}.")
        self.block_sizes = dict(block_sizes)
        self.slices: dict[str, slice] = {}
        start = 0
        for name, width in self.block_sizes.items():
            self.slices[name] = slice(start, start + width)
            start += width
        self.dim = start
        self.rotation = nn.Module()
        self.rotation.weight = nn.Parameter(torch.eye(self.dim))
        parametrize.register_parametrization(self.rotation, "weight", VeltrixOrthogonalMap(self.dim, orthogonal_map))

    @property
    def rotation_matrix(self) -> torch.Tensor:
        """`Q` `(D, D)`, orthogonal."""
        return self.rotation.weight

    def basis(self, name: str) -> torch.Tensor:
        """`Q_m` `(D, d_m)`: orthonormal columns spanning the subspace `S_m` of block `name`."""
        self._check_name(name)
        return self.rotation_matrix[:, self.slices[name]]

    def _check_name(self, name: str) -> None:
        if name not in self.slices:
            raise ValueError(f"`name` must be one of {tuple(self.slices)}, got {name!r}.")

    def fuse(self, parts: dict[str, torch.Tensor], num_slots: int) -> torch.Tensor:
        """Blocks -> fused units.

        Args:
            parts: block name -> `(..., U_m, d_m)` with `U_m <= num_slots`; block `m` fills the first `U_m` slots and
                absent blocks (or slots past `U_m`) are zero. All parts share the leading dimensions.
            num_slots: `U`, the number of unit slots of a step.

        Returns:
            `(..., U, D)`, each unit `Q · [blocks]`.
        """
        if not parts:
            raise ValueError("`parts` must hold at least one block, got none.")
        leading = None
        for name, part in parts.items():
            self._check_name(name)
            width = self.block_sizes[name]
            if part.dim() < 2 or part.shape[-1] != width or part.shape[-2] > num_slots:
                raise ValueError(
                    f"`parts[{name!r}]` must have shape (..., U_m <= {num_slots}, {width}), got {tuple(part.shape)}."
                )
            if leading is None:
                leading = part.shape[:-2]
            elif part.shape[:-2] != leading:
                raise ValueError(
                    f"`parts[{name!r}]` must share the leading shape {tuple(leading)}, got {tuple(part.shape[:-2])}."
                )
        reference = next(iter(parts.values()))
        blocks = reference.new_zeros(*leading, num_slots, self.dim)
        for name, part in parts.items():
            blocks[..., : part.shape[-2], self.slices[name]] = part
        return blocks @ self.rotation_matrix.T  # row-vector form of C_u = Q b_u

    def decompose(self, fused: torch.Tensor, num_slots: dict[str, int] | None = None) -> dict[str, torch.Tensor]:
        """Fused units `(..., U, D)` -> block name -> `(..., U_m, d_m)`, the projection `Q_mᵀ C` of every unit
        (its first `num_slots[m]` slots when given, else all `U`)."""
        if fused.dim() < 2 or fused.shape[-1] != self.dim:
            raise ValueError(f"`fused` must have shape (..., U, {self.dim}), got {tuple(fused.shape)}.")
        coordinates = fused @ self.rotation_matrix  # (..., U, D): b_u = Qᵀ C_u
        num_slots = num_slots or {}
        return {
            name: coordinates[..., : num_slots.get(name, fused.shape[-2]), block] for name, block in self.slices.items()
        }

    @torch.no_grad()
    def cca_initialize_(self, first: str, second: str, first_features: torch.Tensor, second_features: torch.Tensor):
        """Sets `Q` so that the standard coordinates of block `first` (and of `second`) in `C` are that modality's
        canonical directions, orthonormalised in order of decreasing canonical correlation: the leading coordinate
        of each block is its first canonical variate, and the leading `i` coordinates span the top `i` directions.
        Other blocks keep their coordinates.

        Args:
            first_features: `(N, d_first)` block coordinates `φ_first(x)` of `N` paired samples.
            second_features: `(N, d_second)` block coordinates of the same samples.

        Returns:
            the canonical correlations `(min(d_first, d_second),)`, in decreasing order.
        """
        for name, features in ((first, first_features), (second, second_features)):
            self._check_name(name)
            if features.dim() != 2 or features.shape[1] != self.block_sizes[name]:
                raise ValueError(
                    f"`{name}` features must have shape (N, {self.block_sizes[name]}), got {tuple(features.shape)}."
                )
        if first == second:
            raise ValueError(f"`second` must differ from `first` ({first!r}), got {second!r}.")
        first_dirs, second_dirs, correlations = canonical_correlation_directions(first_features, second_features)
        rotation = torch.eye(self.dim, dtype=torch.float64)
        for name, directions in ((first, first_dirs), (second, second_dirs)):
            block = self.slices[name]
            # A complete QR keeps the span of the leading i directions and completes an orthonormal basis; the sign
            # fix makes each leading column point along its canonical direction, not against it.
            basis, upper = torch.linalg.qr(directions.double(), mode="complete")
            signs = torch.diagonal(upper).sign()
            basis[:, : signs.numel()] *= signs.where(signs != 0, torch.ones_like(signs))
            # C = b Qᵀ, so the coordinates of block `name` in C are b · Q_blockᵀ; Q_block = basisᵀ makes them b · basis.
            rotation[block, block] = basis.T
        self.rotation.weight = rotation.to(self.rotation_matrix.dtype)
        return correlations


def canonical_correlation_directions(
    first: torch.Tensor, second: torch.Tensor, eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Canonical correlation analysis of paired samples, by SVD of the whitened cross-covariance.

    `Σ_aa^{-1/2} Σ_ab Σ_bb^{-1/2} = U S Vᵀ`; the directions are `W_a = Σ_aa^{-1/2} U`, `W_b = Σ_bb^{-1/2} V` and the
    canonical correlations are `S`. Computed in float64.

    Args:
        first: `(N, d_a)` samples.
        second: `(N, d_b)` samples paired with `first`.
        eps: ridge added to the covariances' eigenvalues, for rank-deficient data.

    Returns:
        `W_a (d_a, r)`, `W_b (d_b, r)`, correlations `(r,)` in decreasing order, `r = min(d_a, d_b)`; the projections
        `(first - mean) @ W_a` and `(second - mean) @ W_b` have unit variance and pairwise correlations `S`.
    """
    if first.dim() != 2 or second.dim() != 2 or first.shape[0] != second.shape[0]:
        raise ValueError(
            f"`first` and `second` must have shapes (N, d_a) and (N, d_b) with the same N, "
            f"got {tuple(first.shape)} and {tuple(second.shape)}."
        )
    if first.shape[0] < 2:
        raise ValueError(f"`first` must hold at least 2 samples, got {first.shape[0]}.")
    a = first.double() - first.double().mean(0)
    b = second.double() - second.double().mean(0)
    n = a.shape[0]

    def inverse_sqrt(covariance: torch.Tensor) -> torch.Tensor:
        values, vectors = torch.linalg.eigh(covariance)
        return vectors @ torch.diag((values.clamp_min(0) + eps).rsqrt()) @ vectors.T

    whiten_a = inverse_sqrt(a.T @ a / (n - 1))
    whiten_b = inverse_sqrt(b.T @ b / (n - 1))
    cross = whiten_a @ (a.T @ b / (n - 1)) @ whiten_b
    u, s, vh = torch.linalg.svd(cross, full_matrices=False)
    return whiten_a @ u, whiten_b @ vh.T, s


__all__ = [
    "VeltrixLinearEmbedding",
    "VeltrixOrthogonalFusion",
    "VeltrixOrthogonalMap",
    "canonical_correlation_directions",
    "orthonormalize",
    "semi_orthogonal",
]
