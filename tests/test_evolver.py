"""VeltrixEvolverModel: the three scan paths agree, cache + steps equal the full forward, continuous time,
zero-initialised dynamics, save/load, input validation, the three evolution modes, O(1) rollouts, the stability
regulariser."""

import pytest
import torch
from conftest import randomize_, tiny_encoder_config, tiny_evolver_config
from transformers import AutoModel

from modeling_veltrix import VeltrixEncoderModel, VeltrixEvolverModel
from modeling_veltrix.benchmarks.evolver import LiveTensorMemory
from modeling_veltrix.modeling_veltrix_evolver import (
    VeltrixCounterfactualRolloutOutput,
    VeltrixIntervention,
    lyapunov_penalty,
    midpoint_rollout,
)
from modeling_veltrix.worlds import build_world_dataset


def make_model(**overrides) -> VeltrixEvolverModel:
    torch.manual_seed(0)
    # Large initial steps make the SSM's contribution large, so path differences cannot hide.
    config = tiny_evolver_config(time_step_min=0.3, time_step_max=1.0, **overrides)
    return randomize_(VeltrixEvolverModel(config)).double().eval()


def trajectory(batch=2, steps=11, seed=0):
    generator = torch.Generator().manual_seed(seed)
    units = torch.rand(batch, steps, 16, 8, generator=generator, dtype=torch.float64) * 2 - 1
    gaps = torch.rand(batch, steps, generator=generator, dtype=torch.float64) * 0.15 + 0.02  # irregular Δt
    timestamps = torch.cumsum(gaps, dim=1)
    actions = torch.randn(batch, steps, 2, generator=generator, dtype=torch.float64)
    return units, timestamps, actions


@pytest.mark.parametrize("mixer", ["conv", "attention"])
def test_chunked_matches_sequential_model(mixer):
    chunked = make_model(unit_mixer=mixer)
    sequential = VeltrixEvolverModel(tiny_evolver_config(unit_mixer=mixer, scan_implementation="sequential"))
    sequential = sequential.double().eval()
    sequential.load_state_dict(chunked.state_dict())
    units, timestamps, actions = trajectory()
    a = chunked(units, timestamps, actions).predicted_units
    b = sequential(units, timestamps, actions).predicted_units
    assert (a - units).abs().max() > 1e-2  # the model does move the state
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mixer", ["conv", "attention"])
def test_cache_and_steps_equal_full_forward(mixer):
    model = make_model(unit_mixer=mixer)
    units, timestamps, actions = trajectory()
    full = model(units, timestamps, actions).predicted_units
    prefix = model(
        units[:, :5], timestamps[:, :5], actions[:, :5], prediction_timestamps=timestamps[:, 1:6], use_cache=True
    )
    predictions, cache = [prefix.predicted_units[:, -1]], prefix.cache
    for t in range(5, 10):
        predicted, cache = model.step(units[:, t], cache, timestamps[:, t], timestamps[:, t + 1], actions[:, t])
        predictions.append(predicted)
    torch.testing.assert_close(torch.stack(predictions, 1), full[:, 4:10], rtol=0, atol=1e-10)


def test_in_place_steps_equal_steps_that_leave_the_cache_intact():
    model = make_model()
    units, timestamps, actions = trajectory()
    prefix = model(
        units[:, :5], timestamps[:, :5], actions[:, :5], prediction_timestamps=timestamps[:, 1:6], use_cache=True
    )
    kept = [state.clone() for state in prefix.cache.ssm_states + prefix.cache.conv_states]
    with torch.no_grad():
        _, cache = model._step(units[:, 5], prefix.cache, timestamps[:, 5], timestamps[:, 6], actions[:, 5])
        for t in range(6, 9):
            predicted, cache = model._step(units[:, t], cache, timestamps[:, t], timestamps[:, t + 1], actions[:, t])
        _, owned = model._step(units[:, 5], prefix.cache, timestamps[:, 5], timestamps[:, 6], actions[:, 5])
        given = owned.ssm_states + owned.conv_states
        for t in range(6, 9):
            in_place, owned = model._step(
                units[:, t], owned, timestamps[:, t], timestamps[:, t + 1], actions[:, t], in_place=True
            )
    torch.testing.assert_close(in_place, predicted, rtol=0, atol=0)
    assert all(a is b for a, b in zip(owned.ssm_states + owned.conv_states, given, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(prefix.cache.ssm_states + prefix.cache.conv_states, kept, strict=True))
    with pytest.raises(ValueError, match="in_place"):
        model._step(units[:, 9], owned, timestamps[:, 9], timestamps[:, 10], actions[:, 9], in_place=True)


def test_rollout_equals_feeding_predictions_back():
    model = make_model()
    units, timestamps, actions = trajectory()
    rollout = model.rollout(units[:, :4], 5, actions=actions[:, :9], timestamps=timestamps[:, :9])
    assert rollout.units.shape == (2, 5, 16, 8)
    torch.testing.assert_close(rollout.timestamps, timestamps[:, 4:9])
    # Re-run the whole open-loop trajectory through the parallel forward: the same numbers.
    sequence = torch.cat([units[:, :4], rollout.units[:, :-1]], dim=1)
    parallel = model(sequence, timestamps[:, :8], actions[:, :8], prediction_timestamps=timestamps[:, 1:9])
    torch.testing.assert_close(parallel.predicted_units[:, 3:], rollout.units, rtol=0, atol=1e-10)


def test_untrained_evolver_predicts_no_motion():
    model = VeltrixEvolverModel(tiny_evolver_config())
    units, timestamps, actions = trajectory()
    out = model(units.float(), timestamps.float(), actions.float())
    assert torch.equal(out.predicted_units, units.float())
    assert torch.count_nonzero(out.velocities) == 0


def test_step_size_scales_the_update():
    """S_{t+Δt} = S_t + Δt · dS/dt: with the same condition embedding input, the update is linear in Δt."""
    model = make_model()
    units, timestamps, _ = trajectory(steps=1)
    velocities = model(units, timestamps).velocities
    for step in (0.05, 0.2):
        predicted = model(units, timestamps, prediction_timestamps=timestamps + step)
        torch.testing.assert_close(predicted.predicted_units - units, step * predicted.velocities)
    assert velocities.abs().max() > 0


def test_actions_change_the_future_only_after_they_act():
    model = make_model()
    units, timestamps, actions = trajectory()
    edited = actions.clone()
    edited[:, 6] += 3.0
    a = model.rollout(units[:, :4], 7, actions=actions, timestamps=timestamps).units
    b = model.rollout(units[:, :4], 7, actions=edited, timestamps=timestamps).units
    # Future step k of the rollout is the state at trajectory index 4 + k; the action at index 6 acts on 6 -> 7.
    torch.testing.assert_close(a[:, :3], b[:, :3], rtol=0, atol=0)
    assert (a[:, 3] - b[:, 3]).abs().max() > 1e-6


def test_save_load_identical(tmp_path):
    model = make_model().float()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, VeltrixEvolverModel)
    units, timestamps, actions = (t.float() for t in trajectory())
    assert torch.equal(
        loaded(units, timestamps, actions).predicted_units, model(units, timestamps, actions).predicted_units
    )


def test_rollout_memory_is_constant():
    model = make_model()
    units, _, _ = trajectory()
    out = model(units[:, :3], use_cache=True)
    sizes = [sum(t.numel() for t in out.cache.conv_states + out.cache.ssm_states)]
    state, cache = out.predicted_units[:, -1], out.cache
    for i in range(3, 40):
        ts = torch.full((2,), 0.1 * i, dtype=torch.float64)
        state, cache = model.step(state, cache, ts, ts + 0.1)
        sizes.append(sum(t.numel() for t in cache.conv_states + cache.ssm_states))
    assert len(set(sizes)) == 1
    assert torch.isfinite(state).all()


def test_bad_inputs_name_the_argument():
    model = make_model()
    units, timestamps, actions = trajectory()
    cases = [
        (lambda: model(units[..., :4]), "units"),
        (lambda: model(units.float().int().double()[:, :, :3]), "units"),
        (lambda: model(torch.full_like(units, float("nan"))), "units"),
        (lambda: model(units, timestamps.flip(1)), "timestamps"),
        (lambda: model(units, timestamps[:, :4]), "timestamps"),
        (lambda: model(units, timestamps, actions[..., :1]), "actions"),
        (lambda: model(units, timestamps, prediction_timestamps=timestamps), "prediction_timestamps"),
        (lambda: model.rollout(units, 0), "num_steps"),
        (lambda: model.rollout(units[:, :4], 3, timestamps=timestamps[:, :6]), "timestamps"),
        (lambda: model.rollout(units[:, :4], 3, actions=actions[:, :4]), "actions"),
    ]
    for call, argument in cases:
        with pytest.raises(ValueError, match=argument):
            call()


def test_kernel_path_is_visible():
    assert make_model().kernel_path == "torch"  # CPU: the PyTorch path
    assert not make_model(use_mamba_kernels=False).layers[0].ssm.uses_cuda_kernels(torch.device("cuda"))


def test_free_mode_uses_the_null_condition():
    model = make_model()
    units, timestamps, actions = trajectory()
    free = model.rollout(units[:, :4], 5, timestamps=timestamps[:, :9], mode="free").units
    assert torch.equal(free, model.rollout(units[:, :4], 5, timestamps=timestamps[:, :9]).units)
    conditional = model.rollout(units[:, :4], 5, actions=actions[:, :9], timestamps=timestamps[:, :9])
    assert (free - conditional.units).abs().max() > 1e-6


def test_rollout_stream_equals_rollout():
    model = make_model()
    units, timestamps, actions = trajectory()
    rollout = model.rollout(units[:, :4], 5, actions=actions[:, :9], timestamps=timestamps[:, :9])
    stream = list(model.rollout_stream(units[:, :4], 5, actions=actions[:, :9], timestamps=timestamps[:, :9]))
    torch.testing.assert_close(torch.stack([s for _, s in stream], 1), rollout.units, rtol=0, atol=0)
    torch.testing.assert_close(torch.stack([t for t, _ in stream], 1), rollout.timestamps, rtol=0, atol=0)
    with torch.no_grad():  # without gradients the stream updates its cache in place after the first step
        in_place = list(model.rollout_stream(units[:, :4], 5, actions=actions[:, :9], timestamps=timestamps[:, :9]))
        made_here = model.rollout_stream(units[:, :4], 5, actions=actions[:, :9], timestamps=timestamps[:, :9])
    torch.testing.assert_close(torch.stack([s for _, s in in_place], 1), rollout.units, rtol=0, atol=0)
    # The grad mode of each step counts, not that of the call that made the stream.
    torch.testing.assert_close(torch.stack([s for _, s in made_here], 1), rollout.units, rtol=0, atol=0)


def test_single_context_step_matches_forward():
    """With one observed step the rollout starts from zero states, as `forward` does."""
    model = make_model()
    units, timestamps, actions = trajectory()
    first = model.rollout(units[:, :1], 1, actions=actions[:, :2], timestamps=timestamps[:, :2]).units[:, 0]
    expected = model(units[:, :1], timestamps[:, :1], actions[:, :1], prediction_timestamps=timestamps[:, 1:2])
    torch.testing.assert_close(first, expected.predicted_units[:, 0], rtol=0, atol=1e-10)


def test_mode_arguments_are_checked():
    model = make_model()
    units, timestamps, actions = trajectory()
    context, trajectory_actions = units[:, :4], actions[:, :9]
    impulse = VeltrixIntervention(step=1, state_delta=torch.ones_like(units[:, 0]))
    cases = [
        (dict(mode="dreaming"), "mode"),
        (dict(mode="conditional"), "actions"),
        (dict(mode="free", actions=trajectory_actions), "actions"),
        (dict(mode="counterfactual", actions=trajectory_actions), "interventions"),
        (dict(mode="conditional", actions=trajectory_actions, interventions=impulse), "interventions"),
        (dict(interventions=[]), "interventions"),
        (dict(interventions=[impulse, "push"]), r"interventions\[1\]"),
        (dict(interventions=VeltrixIntervention(step=5, state_delta=impulse.state_delta)), r"interventions\[0\].step"),
        (dict(interventions=VeltrixIntervention(step=0)), r"interventions\[0\]"),
        (dict(interventions=VeltrixIntervention(step=2, actions=actions[:, :5])), r"interventions\[0\].actions"),
        (
            dict(interventions=VeltrixIntervention(step=0, state_delta=units[:, 0, :3])),
            r"interventions\[0\].state_delta",
        ),
    ]
    for kwargs, argument in cases:
        with pytest.raises(ValueError, match=argument):
            model.rollout(context, 5, timestamps=timestamps[:, :9], **kwargs)


@pytest.fixture(scope="module")
def bouncing_balls_units(tmp_path_factory):
    """Encoded bouncing-balls trajectories with their impulse actions: units (2, 12, 16, 8), timestamps, actions."""
    dataset = build_world_dataset(
        "bouncing_balls",
        num_trajectories=2,
        num_steps=12,
        seed=5,
        image_size=16,
        num_balls=1,
        ball_radius=2.0,
        irregular_timestamps=True,
        cache_dir=str(tmp_path_factory.mktemp("balls")),
    ).with_format("torch")
    rows = dataset[:]
    torch.manual_seed(0)
    with torch.no_grad():
        units = VeltrixEncoderModel(tiny_encoder_config()).eval()(rows["pixel_values"]).units
    return units, rows["timestamps"], rows["actions"]


@pytest.mark.parametrize("step", [0, 3])
@pytest.mark.parametrize("kind", ["impulse", "state"])
def test_counterfactual_changes_the_branch_from_step_k_on(bouncing_balls_units, step, kind):
    units, timestamps, actions = bouncing_balls_units
    model = randomize_(VeltrixEvolverModel(tiny_evolver_config())).eval()
    context, horizon = 4, 8
    if kind == "impulse":  # an extra push on ball 0 at the transition into future step `step`, the rest unchanged
        edited = actions[:, context - 1 + step : context - 1 + horizon].clone()
        edited[:, 0] += torch.tensor([3.0, -2.0])
        intervention = VeltrixIntervention(step=step, actions=edited)
    else:
        intervention = VeltrixIntervention(step=step, state_delta=torch.full_like(units[:, 0], 0.5))
    with torch.no_grad():
        out = model.rollout(
            units[:, :context], horizon, actions=actions, timestamps=timestamps, interventions=intervention
        )
        factual = model.rollout(units[:, :context], horizon, actions=actions, timestamps=timestamps)
    assert isinstance(out, VeltrixCounterfactualRolloutOutput)
    assert out.counterfactual_units.shape == out.units.shape == (2, horizon, 16, 8)
    assert out.divergence.shape == (2, horizon)
    assert torch.equal(out.units, factual.units)  # the factual branch is the conditional rollout
    assert torch.equal(out.counterfactual_units[:, :step], out.units[:, :step])
    assert (out.divergence[:, :step] == 0).all()
    assert (out.divergence[:, step:] > 1e-4).all()
    rms = (out.counterfactual_units - out.units).pow(2).mean(dim=(2, 3)).sqrt()
    torch.testing.assert_close(out.divergence, rms)


def test_counterfactual_from_a_free_branch_and_several_interventions():
    model = make_model()
    units, timestamps, actions = trajectory()
    push = VeltrixIntervention(step=2, actions=actions[:, 5:8])
    kick = VeltrixIntervention(step=3, state_delta=torch.ones_like(units[:, 0]))
    out = model.rollout(
        units[:, :4], 5, timestamps=timestamps[:, :9], mode="counterfactual", interventions=[push, kick]
    )
    free = model.rollout(units[:, :4], 5, timestamps=timestamps[:, :9]).units
    assert torch.equal(out.units, free)
    assert torch.equal(out.counterfactual_units[:, :2], free[:, :2])
    # The same edits by hand: conditioned from step 2 on, and the state at step 3 pushed.
    state, cache = out.counterfactual_units[:, 1], None
    prefix = model(units[:, :3], timestamps[:, :3], prediction_timestamps=timestamps[:, 1:4], use_cache=True).cache
    state, cache = model.step(units[:, 3], prefix, timestamps[:, 3], timestamps[:, 4])
    for i in range(4, 8):
        state, cache = model.step(
            state, cache, timestamps[:, i], timestamps[:, i + 1], actions[:, i] if i >= 5 else None
        )
        if i == 6:
            state = state + 1.0
        torch.testing.assert_close(state, out.counterfactual_units[:, i - 3], rtol=0, atol=1e-10)


def test_ten_thousand_step_rollout_stays_finite_in_constant_memory():
    torch.manual_seed(0)
    config = tiny_evolver_config(num_units_per_step=1, unit_mixer="attention", num_hidden_layers=1, time_step_max=1.0)
    model = randomize_(VeltrixEvolverModel(config)).eval()
    context = torch.rand(1, 4, 1, 8) * 2 - 1
    with torch.no_grad():
        states = model.rollout_stream(context, 10_000)
        for step, (_, state) in enumerate(states, start=1):
            assert torch.isfinite(state).all(), step
        peaks = []
        for horizon in (20, 400):
            tracker = LiveTensorMemory()
            with tracker:
                for _ in model.rollout_stream(context, horizon):
                    pass
            peaks.append(tracker.peak)
    assert peaks[0] > 0 and peaks[1] == peaks[0]


def test_lyapunov_penalty():
    units, timestamps, actions = (t.float() for t in trajectory())
    context, kwargs = units[:, :4], {"actions": actions[:, :9], "timestamps": timestamps[:, :9]}
    # An untrained evolver moves nothing: a perturbation keeps its size, no step expands it.
    still = VeltrixEvolverModel(tiny_evolver_config())
    reference = still.rollout(context, 5, **kwargs).units
    assert lyapunov_penalty(still, context, reference, **kwargs) < 1e-10
    expansive = randomize_(VeltrixEvolverModel(tiny_evolver_config()), std=1.0)
    reference = expansive.rollout(context, 5, **kwargs).units
    penalty = lyapunov_penalty(expansive, context, reference, generator=torch.Generator().manual_seed(0), **kwargs)
    assert penalty > 0
    penalty.backward()
    assert expansive.velocity_head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="perturbation"):
        lyapunov_penalty(still, context, reference, perturbation=0.0, **kwargs)
    with pytest.raises(ValueError, match="reference"):
        lyapunov_penalty(still, context, reference[:, :, :3], **kwargs)


def test_midpoint_rollout_halves_every_interval():
    model = make_model()
    units, timestamps, actions = trajectory()
    out = midpoint_rollout(model, units[:, :4], 3, actions=actions[:, :7], timestamps=timestamps[:, :7])
    # By hand: a midpoint inside each future interval; an interval's action on its first half, none on the second.
    ends = timestamps[:, 3:7]
    fine_times = [timestamps[:, :4]]
    fine_actions = [actions[:, :3]]
    for k in range(3):
        fine_times += [((ends[:, k] + ends[:, k + 1]) / 2)[:, None], ends[:, k + 1, None]]
        fine_actions += [actions[:, 3 + k, None], torch.zeros_like(actions[:, :1])]
    fine_actions.append(torch.zeros_like(actions[:, :1]))
    by_hand = model.rollout(
        units[:, :4], 6, actions=torch.cat(fine_actions, 1), timestamps=torch.cat(fine_times, 1)
    ).units
    torch.testing.assert_close(out, by_hand[:, 1::2], rtol=0, atol=0)
    assert (
        out - model.rollout(units[:, :4], 3, actions=actions[:, :7], timestamps=timestamps[:, :7]).units
    ).abs().max() > 1e-6
    still = VeltrixEvolverModel(tiny_evolver_config()).double()
    torch.testing.assert_close(midpoint_rollout(still, units[:, :4], 3), units[:, 3:4].expand(-1, 3, -1, -1))


def test_the_rollout_clock_is_float64_so_long_clocks_stay_exact():
    """Times are subtracted in float64: a rollout 1e7 s into a clock equals the one at 0 s, while float32 timestamps
    there cannot hold a 0.1 s step and are refused by name (not turned into 0-second steps and NaN)."""
    torch.manual_seed(0)
    evolver = randomize_(VeltrixEvolverModel(tiny_evolver_config())).eval()
    context = torch.rand(2, 3, 16, 8) * 2 - 1
    clock = (torch.arange(7, dtype=torch.float64) * evolver.config.dt_reference).expand(2, 7)
    at_zero = evolver.rollout(context, 4, timestamps=clock)
    late = evolver.rollout(context, 4, timestamps=clock + 1e7)
    torch.testing.assert_close(late.units, at_zero.units, rtol=0, atol=0)
    assert late.timestamps.dtype == torch.float64
    default = evolver.rollout(context, 4)  # the default grid is made in float64, returned in the context's dtype
    torch.testing.assert_close(default.units, at_zero.units, rtol=0, atol=0)
    assert default.timestamps.dtype == torch.float32
    with pytest.raises(ValueError, match="`timestamps` must be strictly increasing"):
        evolver.rollout(context, 4, timestamps=(clock + 1e7).float())


def test_a_rollout_stops_at_the_first_non_finite_state_and_names_its_step():
    torch.manual_seed(0)
    evolver = randomize_(VeltrixEvolverModel(tiny_evolver_config())).eval()
    context = torch.rand(2, 3, 16, 8) * 2 - 1
    huge = VeltrixIntervention(step=1, state_delta=torch.full((2, 16, 8), 3e38))  # finite, but the next step is not
    with pytest.raises(ValueError, match="future step 2 is not finite"):
        evolver.rollout(context, 4, interventions=huge)
