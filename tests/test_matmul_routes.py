"""Linear layers routed by row count (polyplan/models/matmul_routes.py): the routes chosen from
timings, the same tokens and (to rounding) logits in every pass a chain makes, never outside the
drafter's own passes nor in the exact regime, recorded by the profile and applied from the plan."""

from types import SimpleNamespace

import pytest
import torch

from polyplan.assemble import apply_matmul_routes
from polyplan.errors import UserError
from polyplan.models.matmul_routes import (
    LINEAR,
    PROBE_ROWS,
    TRANSPOSED,
    MatmulRoutes,
    Route,
    choose_routes,
    probe_routes,
    routable_linears,
    shape_key,
)
from polyplan.models.model_drafter import ModelDrafter
from polyplan.profiler.machine import machine_facts, with_matmul_routes

from tiny_models import tiny_llama

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: both layouts and padding, per row count: the kinds a probe on the EPYC of docs/results.md chose
EVERY_KIND = {1: Route(TRANSPOSED, 1), 2: Route(TRANSPOSED, 2), 3: Route(LINEAR, 4), 6: Route(LINEAR, 8)} | {
    r: Route(LINEAR, 8) for r in (4, 5, 7)
}


def every_kind(model: torch.nn.Module) -> MatmulRoutes:
    """:data:`EVERY_KIND` for every weight shape of ``model``."""
    return MatmulRoutes({shape_key(lin.weight): EVERY_KIND for lin in routable_linears(model)})


@pytest.fixture
def taken(monkeypatch) -> list[tuple[str, int]]:
    """(layout, rows) of every routed matmul."""
    import polyplan.models.matmul_routes as matmul_routes

    seen: list[tuple[str, int]] = []
    product = matmul_routes._product

    def spy(layout, x, *args):
        seen.append((layout, x.shape[0]))
        return product(layout, x, *args)

    monkeypatch.setattr(matmul_routes, "_product", spy)
    return seen


def passes(d: ModelDrafter, ids: torch.Tensor) -> list[torch.Tensor]:
    """A prefill, verification-sized passes of 1-7 tokens, a rollback and a tree."""
    d.reset()
    out = [d.score(ids[:12], last=1)]
    pos = 12
    for n in (1, 2, 3, 4, 5, 6, 7):
        out.append(d.score(ids[pos : pos + n]))
        pos += n
    d.rollback(20)
    out.append(d.score(ids[20:23]))
    out.append(d.score_tree(ids[23:24], ids[24:27], [-1, 0, 0]))
    return out


def test_routes_follow_the_timings_steps_and_leave_a_flat_library_alone():
    # the EPYC's MKL on the output head (ms): one row 10 plain / 5 transposed, three 34 / 16, four 17 / 21
    plain = {1: 10, 2: 22, 3: 34, 4: 17, 5: 17, 6: 23, 7: 35, 8: 17}
    flipped = {1: 5, 2: 10, 3: 16, 4: 21, 5: 23, 6: 25, 7: 25, 8: 19}
    steps = {(LINEAR, r): t for r, t in plain.items()} | {(TRANSPOSED, r): t for r, t in flipped.items()}
    routes = choose_routes(steps)
    assert routes[1] == Route(TRANSPOSED, 1) and routes[3] == Route(TRANSPOSED, 3)
    assert routes[6] == Route(LINEAR, 8) and routes[7] == Route(LINEAR, 8)
    assert 4 not in routes and 5 not in routes and 8 not in routes  # nothing clearly faster
    # a library without steps (an Intel Xeon's profile: T(2) ~ T(1)): nothing routed
    flat = {(LINEAR, r): 10 + r for r in plain} | {(TRANSPOSED, r): 11 + r for r in plain}
    assert choose_routes(flat) == {}
    # twice as fast but a few microseconds saved: a routed call's own cost would eat it
    small = {(key, r): t * 1e-6 for (key, r), t in steps.items()}
    assert choose_routes(small) == {}


def test_the_probe_times_every_shape_and_row_count_and_its_routes_round_trip():
    model = tiny_llama(vocab_size=64, num_layers=2, seed=3)
    routes = probe_routes(model, rounds=1)
    shapes = {shape_key(lin.weight) for lin in routable_linears(model)}
    assert set(routes.routes) == set(routes.measured_ms) == shapes and "64x32" in shapes  # the head too
    for per_layout in routes.measured_ms.values():
        assert all(len(per_layout[lay]) == len(PROBE_ROWS) for lay in (LINEAR, TRANSPOSED))
    for per_rows in routes.routes.values():
        assert all(r.rows >= rows and r.layout in (LINEAR, TRANSPOSED) for rows, r in per_rows.items())
    chosen = every_kind(model)
    assert MatmulRoutes.from_dict(chosen.to_dict()).routes == chosen.routes
    with pytest.raises(ValueError):
        MatmulRoutes.from_dict({"routes": {"64x32": {"3": [LINEAR, 2]}}})  # fewer rows than the pass has


def test_transposed_copies_stay_within_the_memory_budget_keeping_the_most_saved_per_byte(monkeypatch):
    """The probe's routes hold transposed copies of their weights: beyond ROUTE_MEMORY_SHARE of the
    memory available, the shapes saving least per byte keep ``F.linear`` (their padded routes stay:
    they copy nothing), and the profile's record says which."""
    import polyplan.models.matmul_routes as matmul_routes

    model = tiny_llama(vocab_size=64, num_layers=2, seed=3)
    head = "64x32"  # the output head's shape (the MLP's up and gate projections share it)

    def steps(weights, rounds):
        # the EPYC's step table (ms) on every shape; the head saves 100 times as much per matmul
        scale = 1e-1 if shape_key(weights[0]) == head else 1e-3
        plain = {1: 10, 2: 22, 3: 34, 4: 17, 5: 17, 6: 23, 7: 35} | {r: 17 for r in PROBE_ROWS if r >= 8}
        flipped = {1: 5, 2: 10, 3: 16, 4: 21, 5: 23, 6: 25, 7: 25} | {r: 19 for r in PROBE_ROWS if r >= 8}
        return {(LINEAR, r): t * scale for r, t in plain.items()} | {
            (TRANSPOSED, r): t * scale for r, t in flipped.items()
        }

    monkeypatch.setattr(matmul_routes, "_time_layouts", steps)
    roomy = probe_routes(model, memory_bytes=2**40)
    assert roomy.over_memory == () and all(r[1].layout == TRANSPOSED for r in roomy.routes.values())
    head_bytes = sum(lin.weight.numel() * 4 for lin in routable_linears(model) if shape_key(lin.weight) == head)
    tight = probe_routes(model, memory_bytes=int(head_bytes / matmul_routes.ROUTE_MEMORY_SHARE))
    assert tight.routes[head][1] == Route(TRANSPOSED, 1)  # the most saved per byte: kept
    others = set(tight.routes) - {head}
    assert set(tight.over_memory) == others
    for shape in others:
        # no copy: 3 rows fall back to the best F.linear way, padded to 4 (17 ms against 34), not to 34 ms
        assert all(r.layout == LINEAR for r in tight.routes[shape].values())
        assert tight.routes[shape][3] == Route(LINEAR, 4)
    assert "for memory" in tight.describe()
    assert MatmulRoutes.from_dict(tight.to_dict()).over_memory == tight.over_memory
    nothing = probe_routes(model, memory_bytes=0).over_memory
    assert set(nothing) == set(tight.routes) and nothing[-1] == head  # the head's copy is the last to go


def test_routed_layers_give_the_same_tokens_and_round_alike_in_every_pass(taken):
    model = tiny_llama(vocab_size=64, num_layers=2, seed=3)
    ids = torch.randint(0, 64, (27,), generator=torch.Generator().manual_seed(0))
    d = ModelDrafter(model, "tiny")
    plain = passes(d, ids)
    direct = model(input_ids=ids[None, :9]).logits
    d.use_matmul_routes(every_kind(model))
    routed = passes(d, ids)
    # every kind of route was taken, padded where it says
    assert {(TRANSPOSED, 1), (TRANSPOSED, 2), (LINEAR, 4), (LINEAR, 8)} <= set(taken)
    for a, b in zip(plain, routed, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    # outside the drafter's passes (transformers' generate on the same model) nothing is routed
    taken.clear()
    assert torch.equal(model(input_ids=ids[None, :9]).logits, direct) and not taken
    # routed again: the new routes replace the old; None: every layer's own forward
    d.use_matmul_routes(MatmulRoutes({"64x32": {1: Route(LINEAR, 4)}}))
    d.use_matmul_routes(None)
    assert all(torch.equal(a, b) for a, b in zip(plain, passes(d, ids), strict=True)) and not taken


def test_members_sharing_a_model_share_its_routes_and_a_window_passes_them_on(taken):
    from polyplan.models.windowed import WindowedDrafter

    model = tiny_llama(vocab_size=64, num_layers=2, seed=3)
    ids = torch.randint(0, 64, (27,), generator=torch.Generator().manual_seed(0))
    first, second = ModelDrafter(model, "a"), ModelDrafter(model, "b")
    first.use_matmul_routes(every_kind(model))
    second.use_matmul_routes(every_kind(model))  # re-installed on the same layers
    passes(first, ids)
    assert taken and first.matmuls_routed and second.matmuls_routed
    second.use_matmul_routes(None)  # the model's routes are gone for both
    taken.clear()
    passes(first, ids)
    assert not taken and not first.matmuls_routed
    windowed = WindowedDrafter(ModelDrafter(tiny_llama(vocab_size=64, seed=4), "w"), window=None)
    windowed.use_matmul_routes(every_kind(windowed.inner.model))
    assert windowed.matmuls_routed and windowed.inner.matmuls_routed


def test_a_layer_with_a_bias_keeps_it_on_every_route(taken):
    lin = torch.nn.Linear(32, 48)
    x = torch.randn(1, 3, 32)
    model = torch.nn.Sequential(lin)
    from polyplan.models.matmul_routes import route_linears

    own = lin.forward  # an instance's own forward (a hook's, say) comes back after routing
    lin.forward = lambda t: own(t)
    hooked = lin.forward
    expected = torch.nn.functional.linear(x, lin.weight, lin.bias)
    for route in (Route(TRANSPOSED, 3), Route(LINEAR, 8)):
        switch = route_linears(model, MatmulRoutes({"48x32": {3: route}}))
        with switch.active():
            torch.testing.assert_close(lin(x), expected)
            assert lin(x).shape == (1, 3, 48)
    assert taken == [(TRANSPOSED, 3)] * 2 + [(LINEAR, 8)] * 2
    assert route_linears(model, None) is None and lin.forward is hooked


def test_the_exact_regime_never_routes(taken):
    model = tiny_llama(vocab_size=64, num_layers=2, seed=5, dtype=torch.bfloat16)
    ids = torch.randint(0, 64, (27,), generator=torch.Generator().manual_seed(1))
    d = ModelDrafter(model, "tiny-bf16")
    assert d.exact
    with d.as_target():
        plain = passes(d, ids)
        d.use_matmul_routes(every_kind(model))
        routed = passes(d, ids)
    assert all(torch.equal(a, b) for a, b in zip(plain, routed, strict=True)) and not taken
    passes(d, ids)  # the same member drafting (not as the target) takes its routes
    assert taken


def test_the_profile_probes_once_records_and_resumes_and_the_plan_applies_it(monkeypatch):
    d = ModelDrafter(tiny_llama(vocab_size=64, seed=2), "tiny")
    chosen = every_kind(d.model)
    notes = []
    monkeypatch.setattr(ModelDrafter, "probe_matmul_routes", lambda self: chosen)
    facts = with_matmul_routes({"cpu": "x"}, [d], notes.append)
    assert MatmulRoutes.from_dict(facts["matmul_routes"]["tiny"]).routes == chosen.routes and notes
    assert d._routes is not None

    def never(self):
        raise AssertionError("a resumed profile must not probe again")

    monkeypatch.setattr(ModelDrafter, "probe_matmul_routes", never)
    fresh = ModelDrafter(tiny_llama(vocab_size=64, seed=2), "tiny")
    assert with_matmul_routes(facts, [fresh], notes.append) == facts and fresh._routes is not None
    # resumed from before the routes: its latency was timed unrouted, so it stays so
    other = ModelDrafter(tiny_llama(vocab_size=64, seed=2), "tiny")
    assert with_matmul_routes({"cpu": "x"}, [other], notes.append, probe=False) == {"cpu": "x"}
    assert other._routes is None
    # a target in an exact regime never routes: not probed
    assert with_matmul_routes({"cpu": "x"}, [other], notes.append, exact_target="tiny") == {"cpu": "x"}

    here = {**machine_facts(), "matmul_routes": facts["matmul_routes"]}
    plan = SimpleNamespace(profile={"machine": here})
    loaded = ModelDrafter(tiny_llama(vocab_size=64, seed=2), "tiny")
    apply_matmul_routes(plan, "p.json", [loaded], notes.append)
    assert loaded._routes is not None and loaded.matmuls_routed
    apply_matmul_routes(SimpleNamespace(profile={"machine": {}}), "p.json", [loaded])  # a plan from before
    assert not loaded.matmuls_routed
    # routes are one CPU's: a plan profiled on another runs unrouted, and says so
    notes.clear()
    elsewhere = SimpleNamespace(profile={"machine": {**here, "cpu": "Some Other CPU"}})
    apply_matmul_routes(elsewhere, "p.json", [loaded], notes.append)
    assert not loaded.matmuls_routed and "another CPU" in notes[0]
    bad = {**here, "matmul_routes": {"tiny": {"routes": {"64x32": {"2": ["up", 2]}}}}}
    with pytest.raises(UserError, match="malformed"):
        apply_matmul_routes(SimpleNamespace(profile={"machine": bad}), "p.json", [loaded])


def test_a_plan_from_this_machine_runs_routed_and_from_another_unrouted():
    """The wiring of ``polyplan run PLAN``: the committed family-25 plan, on the real pool."""
    import json
    from pathlib import Path

    import polyplan
    from polyplan.profiler.machine import other_machine_warning

    path = Path(__file__).resolve().parents[1] / "profiles" / "epyc-fam25" / "smollm2.plan.json"
    plan = json.loads(path.read_text())
    assert plan["profile"]["machine"]["matmul_routes"]["smollm2-135m"]["routes"]
    chain = polyplan.Chain.from_plan(path)
    same_cpu = other_machine_warning(plan["profile"], path) is None
    assert chain.drafters[0].matmuls_routed == same_cpu
