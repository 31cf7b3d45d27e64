"""`nimm agent` with a scripted language model: the search, the standard-law siblings, the
plausible set, the run directory, resuming, executors and what the agent may read."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from nimm_dsl.agent import AgentConfig, run_agent
from nimm_dsl.agent.executor import LocalExecutor
from nimm_dsl.agent.tree import Tree, normalized
from nimm_dsl.llm.client import ScriptedClient

sys.path.insert(0, str(Path(__file__).parent))
from agent_tasks import (EXPONENTIAL, HYBRID, MONOD, write_batch_culture_task,  # noqa: E402
                         write_logistic_task)


def config(task, out, **options):
    settings = dict(budget=2, branches=1, expansions=1, repair_budget=0, validation=0.2, probe=False,
                    patience=1)
    settings.update(options)
    return AgentConfig(task, out, **settings)


def test_normalized_sources_ignore_comments_spacing_and_statement_order():
    a = "model m\ntime t [day]   # clock\nparam k [1/day] = 1 in [0, 2]\n"
    b = "model m\n\nparam  k [1/day] = 1 in [0, 2]\ntime t [day]\n"
    assert normalized(a) == normalized(b)
    assert normalized(a) != normalized(a.replace("= 1 in", "= 2 in"))
    scenario = "scenario s\n  set k = 1\nend\nscenario u\nend\n"
    moved = "scenario s\nend\nscenario u\n  set k = 1\nend\n"
    assert normalized(a + scenario) != normalized(a + moved)


@pytest.mark.slow
def test_a_neural_refinement_wins_on_validation_and_the_run_directory_is_complete(tmp_path):
    task = write_logistic_task(tmp_path)
    client = ScriptedClient([EXPONENTIAL, HYBRID])
    result = run_agent(config(task, tmp_path / "run"), client, LocalExecutor(2), progress=lambda _: None)
    tree = result.tree
    assert [n.kind for n in tree.nodes] == ["propose", "refine"]
    root, child = tree.nodes
    assert root.status == child.status == "ok"
    assert child.parent == 0 and "neural term" in child.change
    assert child.score < 0.5 * root.score  # the hybrid forecasts the plateau; growth overshoots it
    assert result.best is child
    # the refinement prompt showed the parent's residual pattern and estimates
    reflection = client.prompts[1][-1]["content"]
    assert "runs of same-sign residuals" in reflection and "r = " in reflection
    # the learnt let is shown against its driver
    assert child.lets["growth"]["driver"] == "x"
    assert child.lets_refit["growth"]["driver"] == "x"  # fitted a second time from another seed
    second = child.lets_refit["growth"]["data"]["pairs"]
    assert second != child.lets["growth"]["data"]["pairs"]  # another start, not a copy of the first fit
    assert root.lets_refit == {}  # no neural term: nothing to refit
    run = tmp_path / "run"
    for name in ("best.nimm", "best.fit.json", "tree.json", "plausible.json", "transcript.jsonl",
                 "report.md", "nodes/000.nimm", "nodes/001.nimm", "fit.png"):
        assert (run / name).exists(), name
    saved = json.loads((run / "tree.json").read_text())
    assert {"id", "parent", "source", "diagnostics", "status", "scores", "params", "prompt_tokens",
            "seconds"} <= set(saved["nodes"][0])
    assert len((run / "transcript.jsonl").read_text().splitlines()) == 2
    fit = json.loads((run / "best.fit.json").read_text())
    assert fit["weights"] and fit["params"]["r"] > 0
    assert "| 1 | 0 | refine |" in (run / "report.md").read_text()


@pytest.mark.slow
def test_standard_law_siblings_and_an_undetermined_counterfactual(tmp_path):
    task = write_batch_culture_task(tmp_path)
    result = run_agent(config(task, tmp_path / "run", budget=1), ScriptedClient([MONOD]),
                       LocalExecutor(2), progress=lambda _: None)
    tree = result.tree
    laws = {n.change.split(" -> ")[1].split(" in let")[0]: n for n in tree.nodes if n.kind == "law"}
    assert {"Tessier", "Haldane (substrate inhibition)"} <= set(laws)
    assert all(n.parent == 0 for n in laws.values())
    assert all(n.status not in ("check_failed", "bind_failed") for n in laws.values()), \
        {k: n.diagnostics for k, n in laws.items() if n.status == "check_failed"}
    assert laws["Tessier"].status == "ok" and laws["Haldane (substrate inhibition)"].status == "ok"
    assert "mu_Ki" in laws["Haldane (substrate inhibition)"].source
    # the learnt rate over the data range and the scenario's: the scenario leaves the data
    shape = tree.nodes[0].lets["mu"]
    assert shape["driver"] == "S" and shape["data"]["driver_range"][1] == pytest.approx(5, rel=0.01)
    assert shape["scenarios"]["rich"]["driver_range"][1] == pytest.approx(50, rel=0.01)
    assert shape["scenarios"]["rich"]["outside_data"] is True
    plausible = json.loads((tmp_path / "run" / "plausible.json").read_text())
    members = {m["id"] for m in plausible["members"]}
    assert 0 in members and len(members) >= 2
    rich = plausible["scenarios"]["rich"]
    assert rich["determined"] is False
    assert "only visited" in rich["discriminate"]
    assert "not determined by these data" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.slow
def test_resume_continues_without_repeating_finished_nodes(tmp_path):
    task = write_logistic_task(tmp_path)
    out = tmp_path / "run"
    run_agent(config(task, out, budget=1), ScriptedClient([EXPONENTIAL]), LocalExecutor(1),
              progress=lambda _: None)
    first = Tree.load(out)
    assert len(first.nodes) == 1 and first.llm_calls == 1
    client = ScriptedClient([HYBRID])
    result = run_agent(config(task, out, budget=2), client, LocalExecutor(1), progress=lambda _: None)
    assert len(result.tree.nodes) == 2 and result.tree.llm_calls == 2
    assert result.tree.nodes[0].scores == first.nodes[0].scores  # not refitted
    assert len(client.prompts) == 1  # only the refinement was asked for


def test_a_candidate_that_runs_past_its_deadline_is_stopped():
    result = LocalExecutor(1, timeout=0.01).map([{"source": "model m\n", "train": "x.csv"}])[0]
    assert result["status"] == "timeout" and "stopped" in result["error"]


@pytest.mark.slow
def test_the_agent_never_opens_held_out_tables(tmp_path):
    task = write_logistic_task(tmp_path)
    held_out = str(tmp_path / "test.csv")
    opened = []

    def hook(event, args):
        if event == "open" and isinstance(args[0], str) and args[0].endswith("test.csv"):
            opened.append(args[0])

    sys.addaudithook(hook)

    class Recording(LocalExecutor):
        payloads = []

        def map(self, payloads):
            Recording.payloads += payloads
            return super().map(payloads)

    run_agent(config(task, tmp_path / "run", budget=1), ScriptedClient([EXPONENTIAL]), Recording(1),
              progress=lambda _: None)
    assert opened == []
    assert Recording.payloads and all(held_out not in json.dumps(p) for p in Recording.payloads)
    assert all(p["train"].endswith("train.csv") for p in Recording.payloads)


def _comparable(tree: Tree) -> list:
    return [(n.id, n.parent, n.kind, n.source, n.status, n.scores) for n in tree.nodes]


@pytest.mark.slow
def test_a_local_run_and_a_dask_run_build_the_same_tree(tmp_path):
    from dask.distributed import Client, LocalCluster

    from nimm_dsl.agent.executor import DaskExecutor

    task = write_logistic_task(tmp_path)
    local = run_agent(config(task, tmp_path / "local"), ScriptedClient([EXPONENTIAL, HYBRID]),
                      LocalExecutor(2), progress=lambda _: None)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        executor = DaskExecutor(client=client)
        remote = run_agent(config(task, tmp_path / "dask"), ScriptedClient([EXPONENTIAL, HYBRID]),
                           executor, progress=lambda _: None)
    a, b = _comparable(local.tree), _comparable(remote.tree)
    assert [x[:5] for x in a] == [x[:5] for x in b]
    for (*_, scores_a), (*_, scores_b) in zip(a, b):
        assert scores_a.keys() == scores_b.keys()
        for key in ("validation", "validation_nll", "loss"):
            assert scores_a[key] == pytest.approx(scores_b[key], rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_nimm_agent_against_a_loopback_server_repairs_a_candidate_from_e601(tmp_path, llm_stub):
    """The real client over HTTP: the first reply names its clock `t` while the table's column
    is `day` (E601 from the data binding), the repair fixes it, the run delivers."""
    from nimm_dsl.cli import main

    task = write_logistic_task(tmp_path)
    llm_stub.reply(EXPONENTIAL.replace("time day [day]", "time t [day]"))
    llm_stub.reply(EXPONENTIAL)
    out = tmp_path / "run"
    code = main(["agent", str(task), "--endpoint", llm_stub.url, "--llm", "stub", "--budget", "2",
                 "--branches", "1", "--workers", "1", "--out", str(out)])
    assert code == 0
    assert len(llm_stub.requests) == 2
    repair = llm_stub.requests[1].body["messages"][-1]["content"]
    assert "E601" in repair and "time day [day]" in repair
    tree = json.loads((out / "tree.json").read_text())
    node = tree["nodes"][0]
    assert [a["stage"] for a in node["attempts"]] == ["bind", "clean"]
    assert node["status"] == "ok" and (out / "best.nimm").read_text() == node["source"]


def test_when_every_proposal_fails_the_agent_proposes_again_and_says_why(tmp_path):
    task = write_logistic_task(tmp_path)
    broken = EXPONENTIAL.replace("der(x) = r * x", "der(x) = rr * x")  # E201, no repair budget
    client = ScriptedClient([broken, EXPONENTIAL])
    result = run_agent(config(task, tmp_path / "run", budget=2, patience=3), client, LocalExecutor(1),
                       progress=lambda _: None)
    assert [n.status for n in result.tree.nodes] == ["check_failed", "ok"]
    assert result.tree.nodes[1].parent is None and result.best is result.tree.nodes[1]
    assert "it failed: check_failed" in client.prompts[1][-1]["content"]


def test_a_learnt_let_is_shown_with_its_two_fit_spread_and_its_ratio_to_the_best_law():
    from nimm_dsl.agent.search import describe_lets
    from nimm_dsl.agent.tree import Node

    def shape(factor, scenario_factor):
        xs = [0.0, 1.0, 2.0, 4.0]
        return {"driver": "S", "data": {"driver_range": [0, 4], "let_range": [0, 1],
                                        "pairs": [[x, factor * x / (1 + x)] for x in xs]},
                "scenarios": {"rich": {"driver_range": [0, 40], "outside_data": True,
                                       "pairs": [[x, scenario_factor * x / (1 + x)] for x in (0.0, 10.0, 40.0)]}}}

    tree = Tree()
    law = tree.add(None, "propose", "Monod", "model a\nlet mu = 1\n", 0)
    law.status, law.scores, law.lets = "ok", {"validation": 0.2}, {"mu": shape(1.0, 1.0)}
    hybrid = tree.add(None, "propose", "hybrid", "model b\nneural f(x) [1] = mlp()\n", 0)
    hybrid.status, hybrid.scores = "ok", {"validation": 0.1}
    hybrid.lets, hybrid.lets_refit = {"mu": shape(1.1, 0.5)}, {"mu": shape(1.1 * 1.02, 0.5)}
    text = "\n".join(describe_lets(hybrid, tree))
    assert "differs by at most 3% of its size over the data (the two fits agree" in text
    assert "node 0, Monod): ratio 1.1 to 1.1 over the data; 0.5 to 0.5 under scenario `rich` (outside the data)" in text
    assert "OUTSIDE the range the data visited" in text


def test_incidence_laws_read_the_susceptible_state_from_the_flow_not_the_word_order():
    import nimm_dsl
    from nimm_dsl.agent.laws import find_role_let, law_siblings

    model = nimm_dsl.load_source(
        "model m\ntime day [day]\nconst N [1] = 100\nparam beta [1/day] = 0.5 in [0, 2]\n"
        "param gamma [1/day] = 0.2 in [0, 1]\nstate S [1] = 99 in [0, inf]\nstate I [1] = 1 in [0, inf]\n"
        "let infection [1/day] = beta * I * S / N\nflow S -> I = infection\nflow I -> = gamma * I\n"
        "observe y [1] = I\n")
    role = find_role_let(model)
    assert (role.role, role.parts["S"], role.parts["I"], role.driver) == ("incidence", "S", "I", "I")
    saturating = [text for change, text in law_siblings(model, role) if "saturating" in change]
    assert "beta * S * I / (N + infection_alpha * I)" in saturating[0]
    assert nimm_dsl.check(saturating[0]) == []


def test_a_candidate_is_refitted_under_a_negative_binomial_reference_noise():
    """The plausible-set comparison refits a candidate under the reference's noise model; a
    negbinomial reference must stay negbinomial (it became least squares), with its dispersion
    estimated afresh from the reference's fitted value."""
    from types import SimpleNamespace

    from nimm_dsl.agent.score import REFERENCE_DISPERSION, _with_noise, noise_spec
    from nimm_dsl.api import load_source

    reference = load_source(
        'model r "ref"\ntime t [day]\nparam k [1] = 5 in [0.1, 100]\nparam a [1/day] = 0.1 in [0, 1]\n'
        'state x [1] = 10 in [0, inf]\nder(x) = a * x\nobserve y [1] = x ~ negbinomial(dispersion = k)\n')
    spec = noise_spec(reference.ir, SimpleNamespace(params={"k": 7.5, "a": 0.2}))
    assert spec == {"y": {"kind": "negbinomial", "sigma": None, "dispersion": 7.5}}
    source = ('model c "candidate"\ntime t [day]\nparam a [1/day] = 0.1 in [0, 1]\n'
              'state x [1] = 10 in [0, inf]\nder(x) = a * x\nobserve y [1] = x ~ poisson\n')
    rewritten = load_source(_with_noise(source, load_source(source), spec))
    (observe,) = rewritten.ir.observes
    assert observe.noise == "negbinomial" and str(observe.dispersion) == REFERENCE_DISPERSION + "y"
    assert "param reference_dispersion_y [1] = 7.5 in [0.0075, 7500]" in _with_noise(
        source, load_source(source), spec)


def test_the_refinement_request_says_which_estimates_sit_on_a_bound_or_are_poorly_determined():
    """Trying the agent with a language model behind the bridge: it had to compare estimates with
    bounds by itself and missed that sigma, gamma and k sat on their upper bounds."""
    from nimm_dsl.agent.search import _estimate_text
    from nimm_dsl.agent.tree import Node

    node = Node(id=0, parent=None, kind="propose", change="", source="",
                params={"sigma": 0.5, "beta": 0.68, "E0": 7.8, "k": 1000.0},
                stderr={"sigma": 0.01, "beta": 1.1, "E0": None, "k": 670.0},
                units={"sigma": "1/day", "beta": "1/day", "E0": "person", "k": "1"},
                labels={"sigma": ["at its upper bound"], "E0": ["not determined by the data"],
                        "k": ["at its upper bound"]})
    texts = {n: _estimate_text(n, v, node) for n, v in node.params.items()}
    assert texts["sigma"] == "sigma = 0.5 ± 0.01 [1/day] (at its upper bound)"
    assert texts["beta"] == ("beta = 0.68 ± 1.1 [1/day] (the standard error exceeds the estimate: "
                             "poorly determined by these data)")
    assert texts["E0"] == "E0 = 7.8 [person] (not determined by the data)"
    assert texts["k"] == "k = 1000 ± 6.7e+02 [1] (at its upper bound)"
