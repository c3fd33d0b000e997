"""VeltrixEvolverModel: the three scan paths agree, cache + steps equal the full forward, continuous time,
zero-initialised dynamics, save/load, input validation."""

import pytest
import torch
from conftest import randomize_, tiny_evolver_config
from transformers import AutoModel

from modeling_veltrix import VeltrixEvolverModel


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


def test_rollout_equals_feeding_predictions_back():
    model = make_model()
    units, timestamps, actions = trajectory()
    rollout = model.rollout(units[:, :4], 5, conditions=actions[:, :9], timestamps=timestamps[:, :9])
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
    a = model.rollout(units[:, :4], 7, conditions=actions, timestamps=timestamps).units
    b = model.rollout(units[:, :4], 7, conditions=edited, timestamps=timestamps).units
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
        (lambda: model.rollout(units[:, :4], 3, conditions=actions[:, :4]), "conditions"),
    ]
    for call, argument in cases:
        with pytest.raises(ValueError, match=argument):
            call()
