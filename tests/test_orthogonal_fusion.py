"""Orthogonal direct-sum fusion: orthogonal subspaces, exact linear round trip, per-step independence, CCA."""

import pytest
import torch

from modeling_veltrix.orthogonal_fusion import (
    VeltrixLinearEmbedding,
    VeltrixOrthogonalFusion,
    canonical_correlation_directions,
)

BLOCKS = {"frames": 6, "text": 4, "audio": 5, "latent": 3}


def trained_away_from_identity(orthogonal_map: str) -> VeltrixOrthogonalFusion:
    """A fusion whose Q has taken a few gradient steps, so that it is a real rotation."""
    torch.manual_seed(0)
    fusion = VeltrixOrthogonalFusion(BLOCKS, orthogonal_map=orthogonal_map)
    optimizer = torch.optim.SGD(fusion.parameters(), lr=0.5)
    target = torch.randn(fusion.dim, fusion.dim)
    for _ in range(5):
        loss = (fusion.rotation_matrix - target).square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert (fusion.rotation_matrix - torch.eye(fusion.dim)).abs().max() > 0.1
    return fusion


@pytest.mark.parametrize("orthogonal_map", ["cayley", "matrix_exp"])
def test_subspaces_orthogonal(orthogonal_map):
    fusion = trained_away_from_identity(orthogonal_map)
    with torch.no_grad():
        q = fusion.rotation_matrix
        torch.testing.assert_close(q.T @ q, torch.eye(fusion.dim), atol=1e-5, rtol=0)
        names = list(BLOCKS)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                assert (fusion.basis(first).T @ fusion.basis(second)).abs().max() <= 1e-5
        # Fused parts of different modalities are orthogonal vectors.
        parts = {name: torch.randn(2, 3, 4, width) for name, width in BLOCKS.items()}
        single = {name: fusion.fuse({name: part}, num_slots=4) for name, part in parts.items()}
        assert (single["text"] * single["audio"]).sum(-1).abs().max() <= 1e-5
        torch.testing.assert_close(sum(single.values()), fusion.fuse(parts, num_slots=4), atol=1e-5, rtol=0)


def test_linear_round_trip_exact():
    torch.manual_seed(0)
    fusion = trained_away_from_identity("cayley")
    embedding = VeltrixLinearEmbedding(in_features=12, num_units=3, unit_dim=BLOCKS["audio"])
    with torch.no_grad():
        embedding.weight.add_(0.3 * torch.randn_like(embedding.weight))  # a generic full-rank map, not an isometry
        embedding.bias.normal_()
        audio = torch.randn(2, 7, 12)
        text = torch.randn(2, 7, 2, BLOCKS["text"])
        fused = fusion.fuse({"audio": embedding(audio), "text": text}, num_slots=4)
        parts = fusion.decompose(fused, num_slots={"audio": 3, "text": 2})
        recovered = embedding.inverse(parts["audio"])
    assert ((recovered - audio).norm() / audio.norm()).item() <= 1e-5
    assert ((parts["text"] - text).norm() / text.norm()).item() <= 1e-5
    assert parts["frames"].abs().max() <= 1e-5  # absent blocks decompose to zero


def test_permuting_time_permutes_outputs():
    fusion = trained_away_from_identity("matrix_exp")
    parts = {"frames": torch.randn(2, 5, 4, 6), "audio": torch.randn(2, 5, 2, 5)}
    permutation = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        fused = fusion.fuse(parts, num_slots=4)
        permuted = fusion.fuse({name: part[:, permutation] for name, part in parts.items()}, num_slots=4)
    torch.testing.assert_close(permuted, fused[:, permutation])


def synthetic_pair(correlations: list[float], samples: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """Paired samples whose sample canonical correlations are exactly `correlations`, seen through random mixings."""
    generator = torch.Generator().manual_seed(0)
    r, extra_a, extra_b = len(correlations), 1, 2
    width = 2 * r + extra_a + extra_b
    noise = torch.randn(samples, width, generator=generator, dtype=torch.float64)
    noise = noise - noise.mean(0)
    white = torch.linalg.qr(noise)[0] * (samples - 1) ** 0.5  # centred, sample covariance exactly I
    rho = torch.tensor(correlations, dtype=torch.float64)
    latent_a = torch.cat([white[:, :r], white[:, 2 * r : 2 * r + extra_a]], dim=1)
    shared = rho * white[:, :r] + (1 - rho**2).sqrt() * white[:, r : 2 * r]
    latent_b = torch.cat([shared, white[:, 2 * r + extra_a :]], dim=1)
    mix_a = torch.randn(r + extra_a, r + extra_a, generator=generator, dtype=torch.float64)
    mix_b = torch.randn(r + extra_b, r + extra_b, generator=generator, dtype=torch.float64)
    return (latent_a @ mix_a + 3.0).float(), (latent_b @ mix_b - 1.0).float()


def test_cca_reproduces_canonical_correlations():
    truth = [0.9, 0.6, 0.3]
    first, second = synthetic_pair(truth)
    directions_a, directions_b, correlations = canonical_correlation_directions(first, second)
    torch.testing.assert_close(correlations[:3], torch.tensor(truth, dtype=torch.float64), atol=1e-3, rtol=0)
    assert correlations[3:].abs().max() <= 1e-3  # the extra dimensions are independent
    projected_a = (first.double() - first.double().mean(0)) @ directions_a
    projected_b = (second.double() - second.double().mean(0)) @ directions_b
    correlation_matrix = projected_a.T @ projected_b / (first.shape[0] - 1)
    torch.testing.assert_close(torch.diagonal(correlation_matrix)[:3], correlations[:3], atol=1e-3, rtol=0)


def test_cca_initialization_puts_first_canonical_pair_on_leading_coordinates():
    truth = [0.9, 0.6, 0.3]
    first, second = synthetic_pair(truth)  # widths 4 and 5
    fusion = VeltrixOrthogonalFusion({"text": 4, "audio": 5, "latent": 2})
    with torch.no_grad():
        correlations = fusion.cca_initialize_("text", "audio", first, second)
        q = fusion.rotation_matrix
        torch.testing.assert_close(q.T @ q, torch.eye(fusion.dim), atol=1e-5, rtol=0)
        fused = fusion.fuse({"text": first[:, None], "audio": second[:, None]}, num_slots=1)[:, 0]
    lead_text, lead_audio = fused[:, fusion.slices["text"].start], fused[:, fusion.slices["audio"].start]
    measured = torch.corrcoef(torch.stack([lead_text, lead_audio]).double())[0, 1]
    assert abs(measured.item() - truth[0]) <= 1e-3
    assert abs(correlations[0].item() - truth[0]) <= 1e-3


def test_bad_inputs_name_the_argument():
    fusion = VeltrixOrthogonalFusion(BLOCKS)
    with pytest.raises(ValueError, match="parts\\['text'\\]"):
        fusion.fuse({"text": torch.zeros(2, 3, 1, 5)}, num_slots=4)  # wrong width
    with pytest.raises(ValueError, match="parts\\['audio'\\]"):
        fusion.fuse({"text": torch.zeros(2, 3, 1, 4), "audio": torch.zeros(2, 4, 1, 5)}, num_slots=4)  # T differs
    with pytest.raises(ValueError, match="name"):
        fusion.fuse({"smell": torch.zeros(2, 1, 3)}, num_slots=4)
    with pytest.raises(ValueError, match="fused"):
        fusion.decompose(torch.zeros(2, 3, 4, 7))
    with pytest.raises(ValueError, match="orthogonal_map"):
        VeltrixOrthogonalFusion(BLOCKS, orthogonal_map="householder")
    with pytest.raises(ValueError, match="in_features"):
        VeltrixLinearEmbedding(in_features=20, num_units=2, unit_dim=5)
