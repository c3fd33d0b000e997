"""VeltrixEvolverModel keeps transformers' common-model contracts, with and without its stochastic head: every
parameter and buffer initialised by `_init_weights` (also on the meta device), safetensors save/load (float32, an
fp16 variant, bfloat16 loading) restoring every buffer, determinism, batch ≡ single rows (forward and rollout),
dict ≡ tuple outputs, hidden states, gradient checkpointing (same loss and gradients; rollouts unchanged),
bfloat16 construction and forward, and no token embeddings."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_, tiny_evolver_config

from modeling_veltrix import VeltrixEvolverModel
from modeling_veltrix.unit_mixing import VeltrixZeroInitLinear

HEAD_LAYERS = [0, 1]  # without and with the stochastic sampling head
SENTINEL = 1e38


def make_model(sampling_head_layers: int, dtype: torch.dtype = torch.float64) -> VeltrixEvolverModel:
    """A tiny evolver with no zero or unit tensor left: weight matrices by `randomize_`, then every vector
    (biases of the zero-initialised heads, norms, the null condition, SSM parameters) and the change scale."""
    torch.manual_seed(0)
    config = tiny_evolver_config(time_step_min=0.3, time_step_max=1.0, sampling_head_layers=sampling_head_layers)
    model = randomize_(VeltrixEvolverModel(config))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
        if model.sampling_head is not None:
            model.sampling_head.change_scale.copy_(torch.rand(config.unit_dim, generator=generator) + 0.5)
    return model.to(dtype).eval()


def trajectory(batch: int = 3, steps: int = 6, dtype: torch.dtype = torch.float64, seed: int = 0):
    """units (B, T, 16, 8), irregular timestamps (B, T + 4) in float64 (the clock's dtype), actions (B, T + 4, 2)."""
    generator = torch.Generator().manual_seed(seed)
    units = torch.randn(batch, steps, 16, 8, generator=generator).to(dtype)
    gaps = torch.rand(batch, steps + 4, generator=generator) * 0.15 + 0.02
    timestamps = torch.cumsum(gaps, dim=1).double()
    actions = torch.randn(batch, steps + 4, 2, generator=generator).to(dtype)
    return units, timestamps, actions


def call(model: VeltrixEvolverModel, units, timestamps, actions, **kwargs):
    """The teacher-forced forward over the first T steps."""
    t = units.shape[1]
    return model(units, timestamps[:, :t], actions[:, :t], **kwargs)


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, fraction: float) -> None:
    """bfloat16 keeps about three digits: `actual` is within `fraction` of `expected`'s largest magnitude."""
    error = (actual.float() - expected).abs().max()
    assert error <= fraction * expected.abs().max(), f"error {float(error)} vs scale {float(expected.abs().max())}"


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Every parameter and buffer (persistent or not) of `a` equals `b`'s, in value and dtype."""
    tensors_a = {**dict(a.named_parameters()), **dict(a.named_buffers())}
    tensors_b = {**dict(b.named_parameters()), **dict(b.named_buffers())}
    assert sorted(tensors_a) == sorted(tensors_b)
    for name, tensor in tensors_a.items():
        assert tensor.dtype == tensors_b[name].dtype, name
        torch.testing.assert_close(tensor, tensors_b[name], rtol=0, atol=0, msg=name)


def sentinel_filled_meta_build(config) -> VeltrixEvolverModel:
    """The model built on the meta device, materialised on the CPU with a sentinel in every tensor, then
    initialised: whatever `_init_weights` misses keeps the sentinel."""
    with torch.device("meta"):
        model = VeltrixEvolverModel(config)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.fill_(SENTINEL)
    model.init_weights()
    return model


@pytest.mark.parametrize("layers", HEAD_LAYERS)
def test_init_weights_covers_every_parameter_and_buffer_on_meta(layers):
    config = tiny_evolver_config(sampling_head_layers=layers)
    model = sentinel_filled_meta_build(config)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert tensor.device.type == "cpu", name
        assert bool(tensor.isfinite().all()) and bool((tensor.abs() < SENTINEL / 2).all()), f"{name} not initialised"
    torch.manual_seed(0)
    normal = VeltrixEvolverModel(config)
    for name, buffer in normal.named_buffers():  # buffers are deterministic: equal to a normal build's
        torch.testing.assert_close(dict(model.named_buffers())[name], buffer, rtol=0, atol=0, msg=name)
    # The special inits, reproduced by `_init_weights`.
    low, high = config.A_init_range
    for layer in model.layers:
        ssm = layer.ssm
        rates, steps = ssm.A_log.detach().exp(), F.softplus(ssm.dt_bias.detach())
        assert low * (1 - 1e-6) <= float(rates.min()) and float(rates.max()) <= high * (1 + 1e-6)
        assert (
            config.time_step_floor * 0.999 <= float(steps.min()) and float(steps.max()) <= config.time_step_max * 1.001
        )
        assert torch.equal(ssm.D, torch.ones_like(ssm.D))
    assert torch.equal(model.condition_embedding.null_condition, torch.zeros(config.condition_size))
    zero_heads = [m for m in model.modules() if isinstance(m, VeltrixZeroInitLinear)]
    assert len(zero_heads) == config.num_hidden_layers + 1 + 2 * layers  # modulations, velocity head(s)
    for head in zero_heads:  # by design: an untrained evolver returns its input unchanged
        assert not head.weight.any() and not head.bias.any()
    units, timestamps, actions = trajectory(dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(call(model, units, timestamps, actions).predicted_units, units, rtol=0, atol=0)


@pytest.mark.parametrize("layers", HEAD_LAYERS)
def test_missing_weights_are_initialised_by_from_pretrained(layers):
    config = tiny_evolver_config(sampling_head_layers=layers)
    model = VeltrixEvolverModel.from_pretrained(None, config=config, state_dict={})
    normal = VeltrixEvolverModel(config)
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert tensor.device.type == "cpu" and bool(tensor.isfinite().all()), name
    for name, buffer in normal.named_buffers():
        torch.testing.assert_close(dict(model.named_buffers())[name], buffer, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("layers", HEAD_LAYERS)
def test_save_load_round_trip_restores_every_tensor(layers, tmp_path):
    model = make_model(layers, torch.float32)
    model.save_pretrained(tmp_path / "float32")
    assert (tmp_path / "float32" / "model.safetensors").is_file()
    loaded = VeltrixEvolverModel.from_pretrained(tmp_path / "float32").eval()
    assert_same_state(model, loaded)
    units, timestamps, actions = trajectory(dtype=torch.float32)
    with torch.no_grad():
        expected = call(model, units, timestamps, actions).predicted_units
        torch.testing.assert_close(call(loaded, units, timestamps, actions).predicted_units, expected, rtol=0, atol=0)

    half = make_model(layers, torch.float16)
    half.save_pretrained(tmp_path / "variant", variant="fp16")
    assert (tmp_path / "variant" / "model.fp16.safetensors").is_file()
    loaded_half = VeltrixEvolverModel.from_pretrained(tmp_path / "variant", variant="fp16", dtype=torch.float16)
    assert_same_state(half, loaded_half)

    bf16 = VeltrixEvolverModel.from_pretrained(tmp_path / "float32", dtype=torch.bfloat16).eval()
    assert_same_state(model.to(torch.bfloat16), bf16)
    with torch.no_grad():
        out = call(bf16, units.bfloat16(), timestamps, actions.bfloat16()).predicted_units
    assert out.dtype == torch.bfloat16
    assert_close_to_scale(out, expected, 0.05)


@pytest.mark.parametrize("layers", HEAD_LAYERS)
def test_forward_and_rollout_are_deterministic(layers):
    model = make_model(layers)
    units, timestamps, actions = trajectory()
    with torch.no_grad():
        first = call(model, units, timestamps, actions).predicted_units
        second = call(model, units, timestamps, actions).predicted_units
        torch.testing.assert_close(first, second, rtol=0, atol=0)
        assert (first - units).abs().max() > 1e-2
        sample = layers > 0
        rollouts = [
            model.rollout(
                units, 4, actions=actions, timestamps=timestamps, sample=sample, generator=torch.manual_seed(3)
            ).units
            for _ in range(2)
        ]
    torch.testing.assert_close(rollouts[0], rollouts[1], rtol=0, atol=0)


@pytest.mark.parametrize("layers", HEAD_LAYERS)
def test_each_row_alone_equals_its_batched_row(layers):
    model = make_model(layers)
    units, timestamps, actions = trajectory(batch=3)
    with torch.no_grad():
        batched = call(model, units, timestamps, actions, output_hidden_states=True)
        batched_rollout = model.rollout(units, 4, actions=actions, timestamps=timestamps).units
        for row in range(3):
            rows = slice(row, row + 1)
            single = call(model, units[rows], timestamps[rows], actions[rows], output_hidden_states=True)
            torch.testing.assert_close(single.predicted_units, batched.predicted_units[rows], rtol=0, atol=1e-10)
            torch.testing.assert_close(single.velocities, batched.velocities[rows], rtol=0, atol=1e-10)
            for alone, together in zip(single.hidden_states, batched.hidden_states, strict=True):
                torch.testing.assert_close(alone, together[rows], rtol=0, atol=1e-10)
            rollout = model.rollout(units[rows], 4, actions=actions[rows], timestamps=timestamps[rows]).units
            torch.testing.assert_close(rollout, batched_rollout[rows], rtol=0, atol=1e-10)


def assert_same_outputs(a: tuple, b: tuple) -> None:
    """Equal tuples of output values: tensors, tuples of tensors (hidden states) or caches."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert type(x) is type(y)
        if isinstance(x, torch.Tensor):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
        elif isinstance(x, tuple):
            assert_same_outputs(x, y)
        else:  # a cache
            assert_same_outputs(
                (*x.conv_states, *x.ssm_states, x.last_timestamps), (*y.conv_states, *y.ssm_states, y.last_timestamps)
            )


@pytest.mark.parametrize("layers", HEAD_LAYERS)
@pytest.mark.parametrize("use_cache", [False, True])
@pytest.mark.parametrize("output_hidden_states", [False, True])
def test_tuple_output_equals_the_dict_output_to_tuple(layers, use_cache, output_hidden_states):
    model = make_model(layers)
    units, timestamps, actions = trajectory()
    extra = {"use_cache": use_cache, "output_hidden_states": output_hidden_states}
    if layers:
        extra["sampling_targets"] = units + 0.1
    with torch.no_grad():
        as_dict = call(model, units, timestamps, actions, generator=torch.manual_seed(0), **extra)
        as_tuple = call(model, units, timestamps, actions, generator=torch.manual_seed(0), return_dict=False, **extra)
    assert isinstance(as_tuple, tuple)
    assert_same_outputs(as_tuple, as_dict.to_tuple())
    expected_length = 2 + use_cache + output_hidden_states + bool(layers)
    assert len(as_tuple) == expected_length
    if layers:  # the loss first, as transformers' outputs
        assert as_tuple[0].dim() == 0 and as_tuple[0] is not None
        torch.testing.assert_close(as_tuple[0], as_dict.sampling_loss, rtol=0, atol=0)
    torch.testing.assert_close(as_tuple[int(bool(layers))], as_dict.predicted_units, rtol=0, atol=0)
    model.config.return_dict = False  # `return_dict` defaults to the config's
    with torch.no_grad():
        default = call(model, units, timestamps, actions, generator=torch.manual_seed(0), **extra)
    assert_same_outputs(default, as_tuple)


@pytest.mark.parametrize("layers", HEAD_LAYERS)
def test_hidden_states_count_shapes_and_ends(layers):
    model = make_model(layers)
    config = model.config
    units, timestamps, actions = trajectory(batch=2, steps=5)
    with torch.no_grad():
        out = call(model, units, timestamps, actions, output_hidden_states=True)
        assert call(model, units, timestamps, actions).hidden_states is None
        model.config.output_hidden_states = True  # the default comes from the config
        from_config = call(model, units, timestamps, actions)
    hidden = out.hidden_states
    assert isinstance(hidden, tuple) and len(hidden) == config.num_hidden_layers + 1
    for h in hidden:
        assert h.shape == (2, 5, config.num_units_per_step, config.hidden_size)
    torch.testing.assert_close(hidden[0], model.in_proj(units), rtol=0, atol=0)
    with torch.no_grad():  # the last one is what the velocity head reads (after the final norm)
        change_per_interval = model.velocity_head(model.norm_f(hidden[-1]))
    torch.testing.assert_close(change_per_interval / config.dt_reference, out.velocities, rtol=0, atol=1e-12)
    assert_same_outputs(from_config.hidden_states, hidden)


def losses_and_grads(model: VeltrixEvolverModel, units, timestamps, actions) -> tuple[torch.Tensor, dict]:
    """A training loss (teacher forcing, plus the flow-matching loss with a head) and its gradients."""
    model.zero_grad()
    kwargs = {"sampling_targets": units + 0.1, "generator": torch.manual_seed(0)} if model.can_sample else {}
    out = call(model, units, timestamps, actions, **kwargs)
    loss = F.mse_loss(out.predicted_units[:, :-1], units[:, 1:])
    if model.can_sample:
        loss = loss + out.sampling_loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def enable_checkpointing(model: VeltrixEvolverModel) -> None:
    """`gradient_checkpointing_enable()` (deprecated in favour of `activation_checkpointing_enable` in transformers
    5.24, with a FutureWarning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_enable()


@pytest.mark.parametrize("layers", HEAD_LAYERS)
def test_gradient_checkpointing_gives_the_same_loss_and_grads(layers):
    model = make_model(layers).train()
    assert model.supports_gradient_checkpointing
    units, timestamps, actions = trajectory()
    plain_loss, plain_grads = losses_and_grads(model, units, timestamps, actions)
    enable_checkpointing(model)
    assert model.is_activation_checkpointing  # the name of `is_gradient_checkpointing` in transformers 5.24
    assert all(layer.gradient_checkpointing for layer in model.layers)
    calls = []
    hook = model.layers[0].ssm.register_forward_hook(lambda *_: calls.append(1))
    loss, grads = losses_and_grads(model, units, timestamps, actions)
    assert len(calls) == 2  # the block ran again in the backward pass: checkpointing is active
    calls.clear()
    with torch.no_grad():  # only when training with gradients
        call(model, units, timestamps, actions)
    model.eval()
    call(model, units, timestamps, actions)
    assert len(calls) == 2
    hook.remove()
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=1e-12)
    # Every parameter gets a gradient but the null condition (the steps are driven by actions).
    missing = {name for name, _ in model.named_parameters()} - set(grads)
    assert sorted(grads) == sorted(plain_grads) and missing == {"condition_embedding.null_condition"}
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("layers", HEAD_LAYERS)
def test_gradient_checkpointing_leaves_rollouts_and_steps_unchanged(layers):
    plain, checkpointed = make_model(layers).train(), make_model(layers).train()
    enable_checkpointing(checkpointed)
    units, timestamps, actions = trajectory()
    results = []
    for model in (plain, checkpointed):
        model.zero_grad()
        sample = {"sample": True, "generator": torch.manual_seed(2)} if layers else {}
        rollout = model.rollout(units, 4, actions=actions, timestamps=timestamps, **sample).units
        rollout.pow(2).mean().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        t = units.shape[1]
        prefix = call(model, units, timestamps, actions, use_cache=True)
        predicted, _ = model.step(units[:, -1], prefix.cache, timestamps[:, t], timestamps[:, t + 1], actions[:, t])
        results.append((rollout.detach(), grads, predicted.detach()))
    (rollout_a, grads_a, step_a), (rollout_b, grads_b, step_b) = results
    torch.testing.assert_close(rollout_b, rollout_a, rtol=0, atol=0)
    torch.testing.assert_close(step_b, step_a, rtol=0, atol=0)
    assert len(grads_a) == len(grads_b) > 0
    for grad_a, grad_b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(grad_b, grad_a, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layers", HEAD_LAYERS)
def test_bfloat16_construction_and_forward(layers):
    config = tiny_evolver_config(time_step_min=0.3, time_step_max=1.0, sampling_head_layers=layers)
    model = VeltrixEvolverModel._from_config(config, dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16
    assert {t.dtype for t in [*model.parameters(), *model.buffers()]} == {torch.bfloat16}
    reference = make_model(layers, torch.float32)
    model.load_state_dict(reference.state_dict())
    units, timestamps, actions = trajectory(dtype=torch.float32)
    with torch.no_grad():
        expected = call(reference, units, timestamps, actions, use_cache=True)
        out = call(model, units.bfloat16(), timestamps, actions.bfloat16(), use_cache=True)
        assert out.predicted_units.dtype == torch.bfloat16 and out.cache.ssm_states[0].dtype == torch.bfloat16
        assert_close_to_scale(out.predicted_units, expected.predicted_units, 0.05)
        t = units.shape[1]
        step, _ = model.step(units[:, -1].bfloat16(), out.cache, timestamps[:, t], timestamps[:, t + 1])
        reference_step, _ = reference.step(units[:, -1], expected.cache, timestamps[:, t], timestamps[:, t + 1])
        assert step.dtype == torch.bfloat16
        assert_close_to_scale(step, reference_step, 0.05)
        # Open loop, each step's rounding is fed back and grows along the horizon: finite and near, not close.
        rollout = model.rollout(units.bfloat16(), 4, actions=actions.bfloat16(), timestamps=timestamps).units
        reference_rollout = reference.rollout(units, 4, actions=actions, timestamps=timestamps).units
        assert rollout.dtype == torch.bfloat16
        assert_close_to_scale(rollout, reference_rollout, 0.25)
        if layers:  # sampled futures (bfloat16 noise: not comparable with float32's, but finite)
            sampled = model.rollout(units.bfloat16(), 4, sample=True, generator=torch.manual_seed(0)).units
            assert sampled.dtype == torch.bfloat16 and bool(sampled.isfinite().all())


def test_the_input_embedding_is_the_unit_projection():
    model = make_model(0)
    assert model.get_input_embeddings() is model.in_proj  # no tokens: as a vision model's patch embedding
    assert model.get_output_embeddings() is None
    units, timestamps, actions = trajectory()
    model.requires_grad_(False)
    model.enable_input_require_grads()  # what PEFT and reentrant checkpointing need: a graph from the embedding on
    assert call(model, units, timestamps, actions).predicted_units.requires_grad
    model.disable_input_require_grads()
    assert not call(model, units, timestamps, actions).predicted_units.requires_grad
    projection = torch.nn.Linear(8, 16).double()
    model.set_input_embeddings(projection)
    assert model.in_proj is projection


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"output_hidden_states": 1}, "`output_hidden_states` must be a bool or None"),
        ({"return_dict": "yes"}, "`return_dict` must be a bool or None"),
        ({"use_cache": None}, "`use_cache` must be a bool, got None"),
    ],
)
def test_bad_switches_name_the_argument(kwargs, message):
    model = make_model(0)
    units, timestamps, actions = trajectory()
    with pytest.raises(ValueError, match=message):
        call(model, units, timestamps, actions, **kwargs)
