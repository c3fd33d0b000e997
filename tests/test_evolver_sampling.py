"""The evolver's stochastic head: sampled rollouts (shape, seeds, several samples per context, counterfactual noise
sharing, the stream and O(1) memory), the flow-matching objective (it learns a two-mode distribution instead of its
mean), the training stage's terms, save/load and input validation."""

import pytest
import torch
from conftest import randomize_, tiny_encoder_config, tiny_evolver_config

from modeling_veltrix import VeltrixEncoderModel, VeltrixEvolverConfig, VeltrixEvolverModel
from modeling_veltrix.benchmarks.evolver import LiveTensorMemory
from modeling_veltrix.modeling_veltrix_evolver import VeltrixIntervention
from modeling_veltrix.sampling_head import VeltrixSamplingHead
from modeling_veltrix.training import VeltrixTrainingRecipe
from modeling_veltrix.training.stages import VeltrixEvolverStage
from modeling_veltrix.worlds import build_world_dataset


def sampler(**overrides) -> VeltrixEvolverModel:
    torch.manual_seed(0)
    config = tiny_evolver_config(sampling_head_layers=1, time_step_min=0.3, time_step_max=1.0, **overrides)
    return randomize_(VeltrixEvolverModel(config)).double().eval()


def context_and_actions(batch=2, context_steps=5, future_steps=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    context = torch.rand(batch, context_steps, 16, 8, generator=generator, dtype=torch.float64) * 2 - 1
    actions = torch.randn(batch, context_steps + future_steps, 2, generator=generator, dtype=torch.float64)
    return context, actions


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def test_sampled_rollout_shapes_and_spread():
    model = sampler()
    context, actions = context_and_actions()
    out = model.rollout(context, 6, actions=actions, sample=True, num_samples=3, generator=seeded(0))
    assert out.units.shape == (6, 6, 16, 8)
    assert out.timestamps.shape == (6, 6)
    assert out.sample_spread.shape == (2, 6)
    futures = out.units.unflatten(0, (2, 3))
    torch.testing.assert_close(out.sample_spread, futures.std(dim=1).mean(dim=(2, 3)))
    assert bool((out.sample_spread > 0).all())  # the samples of one context differ
    assert model.rollout(context, 6, actions=actions, sample=True, generator=seeded(0)).sample_spread is None


@torch.no_grad()
def test_same_seed_same_futures_other_seed_other_futures():
    model = sampler()
    context, actions = context_and_actions()

    def futures(seed: int) -> torch.Tensor:
        return model.rollout(context, 6, actions=actions, sample=True, num_samples=2, generator=seeded(seed)).units

    torch.testing.assert_close(futures(1), futures(1), rtol=0, atol=0)
    assert (futures(1) - futures(2)).abs().amax(dim=(1, 2, 3)).min() > 1e-3


@torch.no_grad()
def test_the_mean_prediction_is_unchanged_by_the_head():
    model = sampler()
    context, actions = context_and_actions()
    without_head = VeltrixEvolverModel(tiny_evolver_config(time_step_min=0.3, time_step_max=1.0)).double().eval()
    without_head.load_state_dict(model.state_dict(), strict=False)
    expected = without_head.rollout(context, 6, actions=actions).units
    torch.testing.assert_close(model.rollout(context, 6, actions=actions).units, expected, rtol=0, atol=0)
    torch.testing.assert_close(model.rollout(context, 6, actions=actions, sample=False).units, expected)
    sampled = model.rollout(context, 6, actions=actions, sample=True, generator=seeded(0)).units
    assert (sampled - expected).abs().max() > 1e-3


@torch.no_grad()
def test_several_samples_equal_the_repeated_context_sampled_at_once():
    """K samples of B contexts are the B·K rows of one batched pass: the same as rolling out the repeated contexts."""
    model = sampler()
    context, actions = context_and_actions()
    many = model.rollout(context, 6, actions=actions, sample=True, num_samples=3, generator=seeded(5)).units
    repeated = model.rollout(
        context.repeat_interleave(3, 0), 6, actions=actions.repeat_interleave(3, 0), sample=True, generator=seeded(5)
    ).units
    torch.testing.assert_close(many, repeated, rtol=0, atol=1e-10)


@torch.no_grad()
@torch.no_grad()
def test_a_list_of_generators_samples_each_context_as_if_alone():
    model = sampler()
    context, actions = context_and_actions()
    both = model.rollout(context, 6, actions=actions, sample=True, num_samples=3, generator=[seeded(1), seeded(2)])
    for b, seed in enumerate((1, 2)):
        alone = model.rollout(
            context[b : b + 1], 6, actions=actions[b : b + 1], sample=True, num_samples=3, generator=seeded(seed)
        )
        torch.testing.assert_close(both.units[3 * b : 3 * b + 3], alone.units, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="one torch.Generator per trajectory"):
        model.rollout(context, 6, actions=actions, sample=True, generator=[seeded(1)])


def test_counterfactual_branches_share_their_noise():
    model = sampler()
    context, actions = context_and_actions()
    # Replacing the actions by themselves changes nothing: with shared noise the branches are identical.
    same = VeltrixIntervention(step=2, actions=actions[:, 6:10].clone())
    out = model.rollout(context, 6, actions=actions, interventions=same, sample=True, generator=seeded(3))
    torch.testing.assert_close(out.counterfactual_units, out.units, rtol=0, atol=0)
    # A real edit changes the branch from its step on only.
    edit = VeltrixIntervention(step=2, actions=actions[:, 6:10] + 1.0)
    out = model.rollout(
        context, 6, actions=actions, interventions=edit, sample=True, num_samples=2, generator=seeded(3)
    )
    assert out.counterfactual_units.shape == (4, 6, 16, 8)
    assert float(out.divergence[:, :2].detach().abs().max()) == 0.0
    assert bool((out.divergence[:, 2:] > 0).all())


@torch.no_grad()
def test_stream_equals_rollout_when_sampling():
    model = sampler()
    context, actions = context_and_actions()
    rollout = model.rollout(context, 6, actions=actions, sample=True, num_samples=2, generator=seeded(4))
    stream = model.rollout_stream(context, 6, actions=actions, sample=True, num_samples=2, generator=seeded(4))
    torch.testing.assert_close(torch.stack([state for _, state in stream], dim=1), rollout.units, rtol=0, atol=0)


@torch.no_grad()
def test_sampled_step_is_seeded():
    model = sampler()
    context, actions = context_and_actions()
    prefix = model(context[:, :4], actions=actions[:, :4], use_cache=True)
    times = torch.full((2,), 0.4, dtype=torch.float64), torch.full((2,), 0.5, dtype=torch.float64)

    def step(seed: int) -> torch.Tensor:
        return model.step(context[:, 4], prefix.cache, *times, actions[:, 4], sample=True, generator=seeded(seed))[0]

    torch.testing.assert_close(step(0), step(0), rtol=0, atol=0)
    assert (step(0) - step(1)).abs().max() > 1e-3
    mean, _ = model.step(context[:, 4], prefix.cache, *times, actions[:, 4])
    assert (step(0) - mean).abs().max() > 1e-3


def test_ten_thousand_sampled_steps_stay_finite_in_constant_memory():
    torch.manual_seed(0)
    # One Euler step per sample (the default takes 4): what is tested is the sampled states fed back 10 000 times.
    config = tiny_evolver_config(
        num_units_per_step=1,
        unit_mixer="attention",
        num_hidden_layers=1,
        time_step_max=1.0,
        sampling_head_layers=1,
        sampling_steps=1,
    )
    model = randomize_(VeltrixEvolverModel(config), std=0.05).eval()
    context = torch.rand(1, 4, 1, 8) * 2 - 1
    with torch.no_grad():
        stream = model.rollout_stream(context, 10_000, sample=True, generator=seeded(0))
        for step, (_, state) in enumerate(stream, start=1):
            assert torch.isfinite(state).all(), step
        peaks = []
        for horizon in (20, 400):
            tracker = LiveTensorMemory()
            with tracker:
                for _ in model.rollout_stream(context, horizon, sample=True, num_samples=2, generator=seeded(0)):
                    pass
            peaks.append(tracker.peak)
    assert peaks[0] > 0 and peaks[1] == peaks[0]


def test_flow_matching_learns_two_modes_not_their_mean():
    """Half the targets are +1, half −1 given the same input: a mean predictor outputs 0 (the haze); the head's
    samples must land near ±1, both signs."""
    torch.manual_seed(0)
    config = VeltrixEvolverConfig(
        unit_dim=2, num_units_per_step=4, hidden_size=32, intermediate_size=64, condition_size=16, head_dim=8,
        sampling_head_layers=1, sampling_steps=8,
    )  # fmt: skip
    head = VeltrixSamplingHead(config)
    hidden, condition = torch.randn(1, 4, 32).expand(256, 4, 32), torch.randn(1, 16).expand(256, 16)
    signs = torch.where(torch.arange(256) % 2 == 0, 1.0, -1.0)[:, None, None]
    targets = signs * torch.ones(256, 4, 2)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    generator = seeded(0)
    for _ in range(300):
        optimizer.zero_grad()
        head.loss(hidden, condition, targets, generator).backward()
        optimizer.step()
    with torch.no_grad():
        samples = head.sample(hidden, condition, torch.randn(256, 4, 2, generator=seeded(1)))
    per_sample = samples.mean(dim=(1, 2))
    assert float(per_sample.abs().mean()) > 0.7
    assert float((per_sample > 0.5).float().mean()) > 0.25 and float((per_sample < -0.5).float().mean()) > 0.25


def test_forward_returns_the_flow_matching_loss_and_trains_the_head():
    model = sampler().float().train()
    context, actions = context_and_actions()
    units = context.float()
    out = model(units[:, :-1], actions=actions[:, :4].float(), sampling_targets=units[:, 1:], generator=seeded(0))
    assert out.sampling_loss.dim() == 0 and out.sampling_loss > 0
    out.sampling_loss.backward()
    assert model.sampling_head.velocity_proj.weight.grad.abs().sum() > 0
    assert model.layers[0].ssm.in_proj.weight.grad.abs().sum() > 0  # the trunk learns from it too
    again = model(units[:, :-1], actions=actions[:, :4].float(), sampling_targets=units[:, 1:], generator=seeded(0))
    torch.testing.assert_close(again.sampling_loss, out.sampling_loss)
    assert model(units, actions=actions[:, :5].float()).sampling_loss is None


def test_the_evolver_stage_fits_the_change_scale_and_adds_the_sampling_terms():
    torch.manual_seed(0)
    encoder = VeltrixEncoderModel(tiny_encoder_config()).eval()
    evolver = VeltrixEvolverModel(tiny_evolver_config(sampling_head_layers=1))
    data = build_world_dataset(
        "bouncing_balls", num_trajectories=4, num_steps=8, seed=0, image_size=16, num_balls=1, ball_radius=1.5
    )
    data = data.with_format("torch")
    recipe = VeltrixTrainingRecipe(context_length=3, rollout_window=3, trajectory_length=8)
    stage = VeltrixEvolverStage(encoder, evolver, recipe)
    stage.fit_change_scale(data)
    units = encoder(data[:]["pixel_values"]).units
    change = units.diff(dim=1) / (data[:]["timestamps"].diff(dim=1) / 0.1)[..., None, None]
    expected = change.pow(2).mean(dim=(0, 1, 2)).sqrt()
    torch.testing.assert_close(evolver.sampling_head.change_scale, expected, rtol=1e-5, atol=1e-7)
    batch = data[:2]
    arguments = (batch["pixel_values"], batch["timestamps"], batch["actions"])
    torch.manual_seed(1)
    with_terms = stage(*arguments)["loss"]
    without = VeltrixEvolverStage(
        encoder, evolver, VeltrixTrainingRecipe(**{**recipe.__dict__, "sampling_loss_weight": 0.0})
    )
    torch.manual_seed(1)
    assert float(with_terms) > float(without(*arguments)["loss"])
    with_terms.backward()
    assert evolver.sampling_head.velocity_proj.weight.grad.abs().sum() > 0


def test_save_and_load_keep_the_head_and_its_scale(tmp_path):
    model = sampler()
    model.sampling_head.change_scale.fill_(0.25)
    model.save_pretrained(tmp_path)
    loaded = VeltrixEvolverModel.from_pretrained(tmp_path).double().eval()
    torch.testing.assert_close(loaded.sampling_head.change_scale, model.sampling_head.change_scale)
    context, actions = context_and_actions()
    with torch.no_grad():
        a = model.rollout(context, 4, actions=actions[:, :9], sample=True, generator=seeded(0)).units
        b = loaded.rollout(context, 4, actions=actions[:, :9], sample=True, generator=seeded(0)).units
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_sampling_arguments_name_the_argument():
    model = sampler()
    mean_only = VeltrixEvolverModel(tiny_evolver_config()).double().eval()
    context, actions = context_and_actions()
    with pytest.raises(ValueError, match="sample=True.*sampling_head_layers=0"):
        mean_only.rollout(context, 6, actions=actions, sample=True)
    with pytest.raises(ValueError, match="`num_samples` > 1 needs `sample=True`"):
        model.rollout(context, 6, actions=actions, num_samples=2)
    with pytest.raises(ValueError, match="`num_samples` must be an int"):
        model.rollout(context, 6, actions=actions, sample=True, num_samples=0)
    with pytest.raises(ValueError, match="`sample` must be a bool"):
        model.rollout(context, 6, actions=actions, sample="yes")
    with pytest.raises(ValueError, match="`generator` must be a torch.Generator"):
        model.rollout(context, 6, actions=actions, sample=True, generator=0)
    with pytest.raises(ValueError, match="`num_samples` > 1"):
        list(model.rollout_stream(context, 6, actions=actions, num_samples=3))
    with pytest.raises(ValueError, match="`sampling_targets` must have shape"):
        model(context, actions=actions[:, :5], sampling_targets=context[:, :-1])
    with pytest.raises(ValueError, match="`sampling_targets` needs the stochastic head"):
        mean_only(context, actions=actions[:, :5], sampling_targets=context)
    with pytest.raises(ValueError, match="`sampling_head_layers` must be an int >= 0"):
        tiny_evolver_config(sampling_head_layers=-1)
    with pytest.raises(ValueError, match="`sampling_steps` must be an int >= 1"):
        tiny_evolver_config(sampling_steps=0)
