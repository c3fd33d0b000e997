"""VeltrixEngramModel and the evolver with a memory: configuration checks, deterministic n-gram hashing, the table's
count-min lookup with back-off, gated fusion, the bypass (same recurrent state, fewer FLOPs), the parametric memory
(step by step equals teacher forcing), save/load, fingerprints and input checks."""

import pytest
import torch
from conftest import randomize_, tiny_evolver_config
from torch.utils.flop_counter import FlopCounterMode

from modeling_veltrix import VeltrixEvolverModel
from modeling_veltrix.configuration_veltrix import VeltrixEngramConfig, is_prime
from modeling_veltrix.modeling_veltrix_engram import MISSING_CODE, VeltrixEngramModel, weights_fingerprint

UNITS, DIM = 16, 8


def make_engram(**overrides) -> VeltrixEngramModel:
    values = dict(
        unit_dim=DIM,
        num_units_per_step=UNITS,
        fsq_levels=[5, 4, 3],
        table_size=37,
        parametric_table_size=17,
        hidden_size=16,
        embedding_dim=4,
    )
    torch.manual_seed(0)
    return VeltrixEngramModel(VeltrixEngramConfig(**{**values, **overrides}))


def make_evolver() -> VeltrixEvolverModel:
    torch.manual_seed(0)
    return randomize_(VeltrixEvolverModel(tiny_evolver_config())).eval()


def fill_table(engram: VeltrixEngramModel, count: float = 5.0, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        engram.table_counts.fill_(count)
        engram.table_states.copy_(torch.randn(engram.table_states.shape, generator=generator))
        engram.table_step_sizes.fill_(0.1)


def trajectory(batch=3, steps=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    units = torch.randn(batch, steps, UNITS, DIM, generator=generator)
    actions = torch.randn(batch, steps + 8, 2, generator=generator)
    return units, actions


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"ngram_orders": [2, 1]}, "ngram_orders"),
        ({"ngram_orders": [1, 5]}, "ngram_orders"),
        ({"fsq_levels": [2, 4]}, "fsq_levels"),
        ({"fixed_gate": 1.5}, "fixed_gate"),
        ({"use_table": False}, "use_table"),
        ({"injection_layers": [1, 0]}, "injection_layers"),
        ({"bypass_min_count": -1}, "bypass_min_count"),
        ({"table_size": 0}, "table_size"),
    ],
)
def test_config_refuses_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        VeltrixEngramConfig(**overrides)


def test_each_hash_head_has_its_own_prime_table():
    config = VeltrixEngramConfig(table_size=1000, num_hash_heads=3, parametric_table_size=50)
    assert config.table_primes == [1009, 1013, 1019]
    assert all(is_prime(p) for p in config.parametric_primes) and len(set(config.parametric_primes)) == 3
    assert config.num_codes == 8 * 5 * 5 * 5 and config.max_order == 3


def test_hashing_is_deterministic_per_seed_and_in_range():
    history = torch.tensor([[3, 7, 11], [MISSING_CODE, 2, 5], [MISSING_CODE, MISSING_CODE, 0]])
    first, second, other = make_engram(), make_engram(), make_engram(hash_seed=1)
    keys, valid = first.ngram_keys(history)
    assert torch.equal(keys, second.ngram_keys(history)[0])
    assert not torch.equal(keys, other.ngram_keys(history)[0])
    assert valid.tolist() == [[True, True, True], [True, True, False], [True, False, False]]
    slots = first.slots(keys)
    primes = torch.tensor(first.config.table_primes)
    assert bool((slots >= 0).all()) and bool((slots < primes).all())


def test_an_order_n_key_reads_only_the_last_n_codes():
    engram = make_engram()
    a = torch.tensor([[1, 2, 3]])
    b = torch.tensor([[9, 2, 3]])
    keys_a, keys_b = engram.ngram_keys(a)[0], engram.ngram_keys(b)[0]
    assert torch.equal(keys_a[:, :2], keys_b[:, :2])  # orders 1 and 2 agree
    assert not torch.equal(keys_a[:, 2], keys_b[:, 2])


def test_histories_continue_a_given_history():
    engram = make_engram()
    codes = torch.tensor([[4, 5, 6]])
    histories = engram.histories(codes, history=torch.tensor([[1, 2, 3]]))
    assert histories.tolist() == [[[2, 3, 4], [3, 4, 5], [4, 5, 6]]]
    fresh = engram.histories(codes)
    assert fresh[0, 0].tolist() == [MISSING_CODE, MISSING_CODE, 4]


def test_recall_backs_off_and_reads_the_least_collided_head():
    engram = make_engram(hit_threshold=2)
    history = torch.tensor([[1, 2, 3]])
    slots = engram.slots(engram.ngram_keys(history)[0])[0]  # (orders, heads)
    with torch.no_grad():
        # Order 3 is below the threshold, order 2 hits: head 1 holds fewer observations than head 0.
        engram.table_counts[2, 0, slots[2, 0]] = 1
        engram.table_counts[2, 1, slots[2, 1]] = 1
        engram.table_counts[1, 0, slots[1, 0]] = 9
        engram.table_counts[1, 1, slots[1, 1]] = 4
        engram.table_states[1, 1, slots[1, 1]] = 7.0
        engram.table_states[1, 0, slots[1, 0]] = -7.0
        engram.table_step_sizes[1, 1, slots[1, 1]] = 0.2
    recall = engram.recall(history)
    assert recall.hits.tolist() == [True] and recall.orders.tolist() == [2] and recall.counts.tolist() == [4.0]
    assert torch.equal(recall.states, torch.full((1, UNITS, DIM), 7.0))
    assert recall.step_sizes.tolist() == [pytest.approx(0.2)]
    assert recall.foreign.tolist() == [True]  # the slot's stored fingerprint (0) is another key's
    assert recall.confident.tolist() == [False]  # the bypass is disabled


def test_a_miss_remembers_nothing():
    engram = make_engram()
    recall = engram.recall(torch.tensor([[1, 2, 3]]))
    assert recall.hits.tolist() == [False] and float(recall.states.abs().sum()) == 0.0
    fused, alpha = engram.anchor(torch.ones(1, UNITS, DIM), recall, torch.tensor([0.1]))
    assert torch.equal(fused, torch.ones(1, UNITS, DIM)) and float(alpha.detach().abs().sum()) == 0.0


def test_confident_hits_need_the_highest_order_and_the_bypass_count():
    engram = make_engram(bypass_min_count=4)
    fill_table(engram, count=5.0)
    history = torch.tensor([[1, 2, 3], [MISSING_CODE, 2, 3]])
    recall = engram.recall(history)
    assert recall.confident.tolist() == [True, False]  # the second history reaches order 2 only


def test_fusion_follows_the_gate_formula():
    engram = make_engram(fixed_gate=0.25)
    fill_table(engram)
    recall = engram.recall(torch.tensor([[1, 2, 3]]))
    predicted = torch.randn(1, UNITS, DIM)
    fused, alpha = engram.anchor(predicted, recall, torch.tensor([0.1]))
    assert torch.allclose(fused, predicted + 0.25 * (recall.states - predicted))
    assert torch.equal(alpha, torch.full((1, UNITS, 1), 0.25))


def test_the_gate_learns_through_the_fusion():
    engram = make_engram()
    fill_table(engram)
    recall = engram.recall(torch.tensor([[1, 2, 3]]))
    fused, _ = engram.anchor(torch.randn(1, UNITS, DIM), recall, torch.tensor([0.1]))
    fused.pow(2).sum().backward()
    assert float(engram.gate.output.weight.grad.abs().sum()) > 0


def test_an_empty_memory_leaves_the_evolver_unchanged():
    evolver, engram = make_evolver(), make_engram(injection_layers=[1])
    context, actions = trajectory()
    plain = evolver.rollout(context, 5, actions=actions[:, :11]).units
    remembered = evolver.rollout(context, 5, actions=actions[:, :11], engram=engram)
    assert torch.equal(plain, remembered.units)
    assert not bool(remembered.memory_hits.any()) and float(remembered.memory_gates.detach().abs().sum()) == 0.0


def test_a_filled_table_moves_the_rollout_towards_memory():
    evolver, engram = make_evolver(), make_engram()
    fill_table(engram)
    context, actions = trajectory()
    plain = evolver.rollout(context, 5, actions=actions[:, :11]).units
    remembered = evolver.rollout(context, 5, actions=actions[:, :11], engram=engram)
    assert bool(remembered.memory_hits.all())
    assert torch.allclose(remembered.memory_gates, torch.full((3, 5), 0.5))  # untrained gate: σ(0)
    assert not torch.allclose(plain, remembered.units)


@pytest.mark.parametrize("injection_layers", [[0], [0, 1]])
def test_parametric_memory_steps_equal_teacher_forcing(injection_layers):
    evolver = make_evolver()
    engram = make_engram(use_table=False, injection_layers=injection_layers)
    randomize_(engram, std=0.5)
    units, actions = trajectory(steps=7)
    times = (torch.arange(7, dtype=torch.float64) * 0.1).expand(3, 7)
    full = evolver(units, timestamps=times, actions=actions[:, :7], engram=engram).predicted_units
    without = evolver(units, timestamps=times, actions=actions[:, :7]).predicted_units
    assert not torch.allclose(full, without, atol=1e-4)
    cache = evolver(units[:, :3], timestamps=times[:, :3], actions=actions[:, :3], engram=engram, use_cache=True).cache
    steps = []
    for k in range(3, 7):
        next_time = times[:, k] + 0.1
        predicted, cache = evolver.step(units[:, k], cache, times[:, k], next_time, actions[:, k], engram=engram)
        steps.append(predicted)
    assert torch.allclose(torch.stack(steps, dim=1), full[:, 3:], atol=1e-5)


def test_a_bypassed_step_keeps_the_recurrent_state_and_costs_less():
    evolver = make_evolver()
    engram = make_engram(bypass_min_count=1)
    fill_table(engram)
    units, actions = trajectory()
    cache = evolver(units[:, :4], actions=actions[:, :4], engram=engram, use_cache=True).cache
    history = engram.push_codes(cache.code_history, engram.codes(units[:, 4:5])[:, 0])
    now, later = torch.full((3,), 0.4, dtype=torch.float64), torch.full((3,), 0.5, dtype=torch.float64)
    args = (units[:, 4], cache, now, later, actions[:, 4], engram, history)
    with FlopCounterMode(display=False) as full_count:
        _, full_cache = evolver._step(*args)
    bypass = torch.tensor([True, False, True])
    with FlopCounterMode(display=False) as bypass_count:
        predicted, bypass_cache = evolver._bypassed_step(*args, bypass)
    for full_state, state in zip(
        full_cache.ssm_states + full_cache.conv_states,
        bypass_cache.ssm_states + bypass_cache.conv_states,
        strict=True,
    ):
        assert torch.allclose(full_state, state, atol=1e-6)
    assert torch.equal(full_cache.code_history, bypass_cache.code_history)
    full_prediction, _ = evolver._step(*args)
    assert torch.allclose(predicted[1], full_prediction[1], atol=1e-6)
    assert bypass_count.get_total_flops() < full_count.get_total_flops()


def test_a_bypassing_rollout_equals_fusion_with_a_gate_of_one():
    evolver = make_evolver()
    context, actions = trajectory()
    bypassing = make_engram(bypass_min_count=1)
    gate_one = make_engram(fixed_gate=1.0)
    for engram in (bypassing, gate_one):
        fill_table(engram)
    first = evolver.rollout(context, 4, actions=actions[:, :10], engram=bypassing)
    second = evolver.rollout(context, 4, actions=actions[:, :10], engram=gate_one)
    assert bool(first.memory_bypassed.all()) and not bool(second.memory_bypassed.any())
    assert torch.allclose(first.units, second.units, atol=1e-6)


def test_cache_select_and_merge_are_inverse():
    evolver, engram = make_evolver(), make_engram()
    units, actions = trajectory()
    cache = evolver(units, actions=actions[:, :6], engram=engram, use_cache=True).cache
    first, second = torch.tensor([2, 0]), torch.tensor([1])
    merged = type(cache).merge([(first, cache.select(first, UNITS)), (second, cache.select(second, UNITS))], UNITS)
    for a, b in zip(merged.conv_states + merged.ssm_states, cache.conv_states + cache.ssm_states, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(merged.code_history, cache.code_history)
    assert torch.equal(merged.last_timestamps, cache.last_timestamps)


def test_save_and_load_keep_codes_tables_and_hashing(tmp_path):
    engram = make_engram(injection_layers=[0])
    fill_table(engram)
    randomize_(engram)
    with torch.no_grad():
        engram.state_mean.normal_()
    units, _ = trajectory()
    engram.save_pretrained(tmp_path)
    loaded = VeltrixEngramModel.from_pretrained(tmp_path)
    assert torch.equal(loaded.codes(units), engram.codes(units))
    history = engram.histories(engram.codes(units))[:, -1]
    assert torch.equal(loaded.recall(history).states, engram.recall(history).states)
    assert weights_fingerprint(loaded) == weights_fingerprint(engram)
    assert list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob("*.bin"))


def test_fingerprints_survive_half_precision_and_see_changes():
    evolver = make_evolver()
    fingerprint = weights_fingerprint(evolver)
    assert weights_fingerprint(make_evolver().half()) == fingerprint
    with torch.no_grad():
        evolver.velocity_head.weight[0, 0] += 1.0
    assert weights_fingerprint(evolver) != fingerprint


def test_the_evolver_checks_its_memory():
    evolver = make_evolver()
    context, _ = trajectory()
    with pytest.raises(ValueError, match="VeltrixEngramModel"):
        evolver.rollout(context, 2, engram=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unit_dim"):
        evolver.rollout(context, 2, engram=make_engram(unit_dim=4))
    with pytest.raises(ValueError, match="layers"):
        evolver.rollout(context, 2, engram=make_engram(injection_layers=[5]))
    with pytest.raises(ValueError, match="hidden_size"):
        evolver.rollout(context, 2, engram=make_engram(injection_layers=[0], hidden_size=8))
    with pytest.raises(ValueError, match="dtype"):
        evolver.rollout(context, 2, engram=make_engram().double())
    cache = evolver(context, use_cache=True).cache
    now = torch.full((3,), 0.6, dtype=torch.float64)
    with pytest.raises(ValueError, match="code history"):
        evolver.step(context[:, -1], cache, now, now + 0.1, engram=make_engram())
    with pytest.raises(ValueError, match="units"):
        make_engram().codes(torch.randn(2, 3, UNITS, DIM + 1))


def test_unseen_codes_snap_to_the_nearest_seen_code():
    engram = make_engram()  # levels [5, 4, 3]: code = l0 + 5·l1 + 20·l2
    counts = torch.zeros(engram.config.num_codes, dtype=torch.int64)
    counts[[0, 59]] = 3  # level indices (0, 0, 0) and (4, 3, 2)
    engram.set_seen_codes(counts)
    assert engram.code_snap[0] == 0 and engram.code_snap[59] == 59
    assert engram.code_snap[1] == 0  # (1, 0, 0) is next to (0, 0, 0)
    assert engram.code_snap[58] == 59  # (3, 3, 2) is next to (4, 3, 2)
    units, _ = trajectory()
    raw = engram.quantize(units)[1]
    assert torch.equal(engram.codes(units), engram.code_snap[raw])
    assert engram.table_statistics()["codes_seen"] == 2
    engram.config.snap_to_seen_codes = False
    assert torch.equal(engram.codes(units), raw)
    with pytest.raises(ValueError, match="counts"):
        engram.set_seen_codes(torch.zeros(engram.config.num_codes, dtype=torch.int64))


def test_verified_keys_back_off_from_a_slot_of_another_ngram():
    engram = make_engram(verify_keys=True)
    history = torch.tensor([[1, 2, 3]])
    keys = engram.ngram_keys(history)[0][0]  # (orders, heads + 1)
    slots = engram.slots(keys[None])[0]
    with torch.no_grad():
        engram.table_counts[2, :, :] = 9.0  # order 3: every slot full, but of another n-gram
        engram.table_fingerprints[2] = keys[2, -1] + 1
        engram.table_counts[1, 0, slots[1, 0]] = 4.0
        engram.table_counts[1, 1, slots[1, 1]] = 5.0
        engram.table_fingerprints[1, 0, slots[1, 0]] = keys[1, -1]
    recall = engram.recall(history)
    assert recall.orders.tolist() == [2] and recall.foreign.tolist() == [False]
    engram.config.verify_keys = False
    recall = engram.recall(history)
    assert recall.orders.tolist() == [3] and recall.foreign.tolist() == [True]
