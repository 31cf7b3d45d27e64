"""What an agent run delivers (docs/agent.md): the best model refitted on the whole training
table, the plausible set with every requested scenario under each of its models, and a report.

The plausible set (TASKS.md §4 step 6): the candidates whose validation negative log-likelihood is
within 2 of the best's, on the same observations under the same observation model — a candidate
whose noise model differs from the best's is refitted under the best's first. Where the set's
models disagree on a scenario by more than the noise, the report says the counterfactual is not
determined by these data, shows the spread, and says where a measurement would discriminate.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np

from ..runtime.files import write_bytes_atomic, write_text_atomic

PLAUSIBLE_NLL = 2.0  # TASKS.md §4: within 2 of the best's validation negative log-likelihood
NOISE_MULTIPLE = 2.0  # disagreement beyond twice the residual scale is "beyond the noise"


def deliver(agent, reason: str):
    from .search import AgentResult

    tree, run_dir = agent.tree, agent.run_dir
    best = tree.best()
    result = AgentResult(tree, best, run_dir, stopped_because=reason)
    if best is None:
        write_text_atomic(run_dir / "report.md", report_markdown(agent, None, {}, reason))
        return result
    final = agent.executor.map([agent.payload(best, validation=0.0, full_fit=True)])[0]
    write_text_atomic(run_dir / "best.nimm", best.source)
    for table in agent.task.tables:  # beside best.nimm, so that its `table(...)` reads them there
        write_bytes_atomic(run_dir / table.name, table.read_bytes())
    if final.get("status") == "ok" and final.get("fit_json"):
        write_text_atomic(run_dir / "best.fit.json", json.dumps(final["fit_json"], indent=2) + "\n")
    else:
        agent.progress(f"[agent] warning: the refit of node {best.id} on the whole table failed: "
                       f"{final.get('error')}")
    plausible = plausible_set(agent, best)
    result.plausible = plausible
    from ..runtime.files import json_safe

    write_text_atomic(run_dir / "plausible.json",
                      json.dumps(json_safe(plausible), indent=1, allow_nan=False) + "\n")
    plots = write_plots(agent, best, final.get("fit_json"), plausible)
    write_text_atomic(run_dir / "report.md", report_markdown(agent, best, plausible, reason, final, plots))
    tree.save(run_dir)
    return result


def _same_noise(a: dict, b: dict) -> bool:
    return {k: v.get("kind") for k, v in a.items()} == {k: v.get("kind") for k, v in b.items()}


def plausible_set(agent, best) -> dict:
    tree = agent.tree
    reference = best.scores.get("validation_nll")
    if reference is None:
        return {"best": best.id, "members": [_member(best, None, False)], "note": "no validation "
                "hold-out: the plausible set is the best model alone",
                "scenarios": scenario_spread(agent, [best])}
    # the same observations: a candidate that observes other quantities is not comparable
    candidates = [n for n in tree.scored() if set(n.noise) == set(best.noise)]
    refit = [n for n in candidates if n is not best and not _same_noise(n.noise, best.noise)]
    nll = {n.id: n.scores.get("validation_nll") for n in candidates if n not in refit}
    if refit:  # the same observation model as the best's before comparing likelihoods
        results = agent.executor.map([agent.payload(n, noise=best.noise) for n in refit])
        for node, res in zip(refit, results):
            nll[node.id] = (res.get("scores") or {}).get("validation_nll") if res.get("status") == "ok" else None
    members = [n for n in candidates if nll.get(n.id) is not None and nll[n.id] <= reference + PLAUSIBLE_NLL]
    return {
        "best": best.id,
        "rule": f"validation negative log-likelihood within {PLAUSIBLE_NLL:g} of the best's, under the "
                "best's observation model",
        "members": [_member(n, nll[n.id], n in refit) for n in members],
        "excluded": [{"id": n.id, "validation_nll": nll.get(n.id)} for n in candidates if n not in members]
        + [{"id": n.id, "reason": "observes other quantities than the best"}
           for n in tree.scored() if set(n.noise) != set(best.noise)],
        "scenarios": scenario_spread(agent, members),
    }


def _member(node, nll, refitted: bool) -> dict:
    score = node.scores.get("validation")
    return {"id": node.id, "change": node.change, "validation": score, "validation_nll": nll,
            "refitted_under_best_noise": refitted}


def scenario_spread(agent, members) -> dict:
    """Per scenario: each model's trajectory summary, the spread between them, and a verdict."""
    out = {}
    best = members[0] if members else None
    for scenario in agent.scenarios:
        runs = {n.id: n.scenarios.get(scenario) for n in members if n.scenarios.get(scenario)}
        entry: dict = {"models": {}, "spread": {}, "determined": True}
        if not runs:
            entry["determined"] = None
            entry["note"] = "no plausible model defines this scenario"
            out[scenario] = entry
            continue
        times = np.asarray(next(iter(runs.values()))["times"], float)
        for node_id, run in runs.items():
            entry["models"][str(node_id)] = {
                o: {"start": v[0], "end": v[-1], "min": min(v), "max": max(v),
                    "peak_time": float(times[int(np.argmax(v))])}
                for o, v in run["values"].items() if v and all(x is not None for x in v)}
        observes = sorted({o for run in runs.values() for o in run["values"]})
        for o in observes:
            stack = [np.asarray(run["values"][o], float) for run in runs.values()
                     if o in run["values"] and len(run["values"][o]) == len(times)]
            if len(stack) < 2:
                continue
            stack = np.vstack(stack)
            spread = np.nanmax(stack, axis=0) - np.nanmin(stack, axis=0)
            k = int(np.nanargmax(spread))
            noise = (best.scores.get("train_rmse") or {}).get(o) if best else None
            relative = float(spread[k] / noise) if noise else None
            entry["spread"][o] = {"max": float(spread[k]), "at_time": float(times[k]),
                                  "residual_rmse": noise, "relative_to_noise": relative}
            if relative is not None and relative > NOISE_MULTIPLE:
                entry["determined"] = False
        outside = _outside_data(members, scenario)
        if outside:
            entry["outside_data"] = outside
        if entry["determined"] is False:
            worst = max(entry["spread"].items(), key=lambda kv: kv[1]["relative_to_noise"] or 0)
            entry["discriminate"] = (f"the plausible models disagree most on `{worst[0]}` at "
                                     f"{_time_name(best, agent.tables)} = {worst[1]['at_time']:.3g} under this "
                                     f"scenario ({worst[1]['max']:.3g} apart, {worst[1]['relative_to_noise']:.1f}× "
                                     "the residual scale): a measurement there, or data from a regime like "
                                     "the scenario's, would tell them apart")
            if outside:
                entry["discriminate"] += "; " + outside
        out[scenario] = entry
    return out


def _outside_data(members, scenario: str) -> str:
    """Where the scenario takes a let's driver beyond what the data visited, in words."""
    for node in members:
        for let, shape in (node.lets or {}).items():
            run = shape.get("scenarios", {}).get(scenario)
            if run and run.get("outside_data"):
                (a, b), (lo, hi) = run["driver_range"], shape["data"]["driver_range"]
                return (f"the scenario drives `{shape['driver']}` to [{a:.3g}, {b:.3g}] while the data "
                        f"only visited [{lo:.3g}, {hi:.3g}]: the laws for `{let}` fitted on the data "
                        f"need not agree there")
    return ""


def _g(value) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _time_name(node, tables=None) -> str:
    from ..api import load_source

    try:
        return load_source(node.source, "<candidate>", tables).ir.time_name or "time"
    except Exception:  # noqa: BLE001 - only a label
        return "time"


# ---------------------------------------------------------------- the report
def report_markdown(agent, best, plausible: dict, reason: str, final: Optional[dict] = None,
                    plots: Optional[list] = None) -> str:
    tree = agent.tree
    lines = [f"# Agent run: {agent.task.name}", "",
             f"Stopped: {reason}. {len(tree.nodes)} nodes, {tree.llm_calls} language-model calls, "
             f"validation hold-out {agent.config.validation:g} of each series.", ""]
    lines += ["## Search tree", "",
              "| node | parent | kind | change | status | validation |", "|---|---|---|---|---|---|"]
    for n in tree.nodes:
        score = f"{n.score:.4g}" if math.isfinite(n.score) else "—"
        change = n.change.replace("|", "/")
        lines.append(f"| {n.id} | {'' if n.parent is None else n.parent} | {n.kind} | {change} | "
                     f"{n.status} | {score} |")
    lines.append("")
    if best is None:
        lines.append("No candidate could be fitted: see the diagnostics in tree.json.")
        return "\n".join(lines) + "\n"
    lines += [f"## Best model: node {best.id}", "", f"{best.change}; validation score {best.score:.4g}.", ""]
    fit_json = (final or {}).get("fit_json") or {}
    if fit_json:
        lines += ["Refitted on the whole training table:", "", "| param | value | std. error | unit |",
                  "|---|---|---|---|"]
        for name in fit_json.get("estimated", []):
            se = (fit_json.get("stderr") or {}).get(name)
            lines.append(f"| {name} | {fit_json['params'][name]:.6g} | "
                         f"{'not determined' if se is None else f'{se:.3g}'} | {(fit_json.get('units') or {}).get(name) or ''} |")
        lines.append("")
    lines += ["```nimm", best.source.rstrip(), "```", ""]
    try:  # the compiled equations, as `nimm show --format text` prints them
        from ..api import load_source

        lines += ["Equations (declared units):", "", "```", load_source(best.source, "best.nimm", agent.tables).equations().rstrip(),
                  "```", ""]
    except Exception:  # noqa: BLE001 - the source above says it all
        pass
    from .search import describe_lets

    shapes = describe_lets(best, tree)
    if shapes:
        lines += ["What the model's key quantities do:", ""] + [f"- {text}" for text in shapes] + [""]
    if plausible:
        lines += ["## Plausible set", "", plausible.get("rule", plausible.get("note", "")), "",
                  "| node | change | validation | validation NLL |", "|---|---|---|---|"]
        for m in plausible.get("members", []):
            lines.append(f"| {m['id']} | {m['change']} | {_g(m['validation'])} | {_g(m['validation_nll'])} |")
        lines.append("")
        for scenario, entry in plausible.get("scenarios", {}).items():
            verdict = {True: "determined by these data (the plausible models agree within the noise)",
                       False: "**not determined by these data**", None: "not simulated"}[entry.get("determined")]
            lines.append(f"### Scenario `{scenario}`: {verdict}")
            for o, s in entry.get("spread", {}).items():
                rel = s.get("relative_to_noise")
                lines.append(f"- `{o}`: the models are up to {s['max']:.3g} apart (at {s['at_time']:.3g}"
                             + (f"; {rel:.1f}× the residual scale" if rel is not None else "") + ")")
            if entry.get("discriminate"):
                lines.append(f"- What would discriminate: {entry['discriminate']}")
            elif entry.get("outside_data"):
                lines.append(f"- Note: {entry['outside_data']}")
            lines.append("")
    for path in plots or []:
        lines.append(f"![{Path(path).stem}]({Path(path).name})")
    return "\n".join(lines) + "\n"


def write_plots(agent, best, fit_json: Optional[dict], plausible: dict) -> list[Path]:
    """fit.png (the best model refitted, the validation window shaded) and one
    scenario_<name>.png per scenario with every plausible model."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        written.append(write_bytes_atomic(agent.run_dir / name, buffer.getvalue()))

    try:
        from ..api import load_source
        from ..runtime.data import load_data

        model = load_source(best.source, "best.nimm", agent.tables)
        ir = model.ir
        if fit_json and not ir.is_static:
            dataset = load_data(agent.task.train, ir)
            train, _ = dataset.split(agent.config.validation) if agent.config.validation > 0 else (dataset, None)
            sim = model.compile(agent.backend)
            from ..runtime.weights import weights_from_fit_entry

            weights = weights_from_fit_entry(fit_json["weights"], "best.fit.json") if fit_json.get("weights") else None
            observes = dataset.observed_names
            fig, axes = plt.subplots(1, len(observes), squeeze=False, figsize=(5 * len(observes), 3.2))
            series, cut = dataset.series[0], train.series[0].n_points
            fine = np.linspace(series.times[0], series.times[-1], 300)
            own = {**fit_json["params"], **{k: v[series.label] for k, v in (fit_json.get("series_params") or {}).items()
                                            if series.label in v}}
            run = sim.simulate(fine, params=own, **series.run_options(), weights=weights)
            for ax, o in zip(axes[0], observes):
                if cut < series.n_points:
                    ax.axvspan(series.times[cut], series.times[-1], color="0.92", lw=0, label="validation window")
                ax.plot(fine, run[o], color="C0", label=f"node {best.id}")
                ax.plot(series.times, series.observed[o], "o", ms=3.5, color="k", label="train data")
                ax.set_xlabel(ir.time_name)
                ax.set_ylabel(o)
            axes[0][0].legend(fontsize=7)
            fig.tight_layout()
            save(fig, "fit.png")
    except Exception as e:  # noqa: BLE001 - a plot is never worth losing the run's results
        agent.progress(f"[agent] warning: no fit plot ({type(e).__name__}: {e})")
    members = {m["id"] for m in plausible.get("members", [])} or {best.id}
    for scenario in agent.scenarios:
        runs = [(n.id, n.scenarios[scenario]) for n in agent.tree.nodes
                if n.id in members and n.scenarios.get(scenario)]
        if not runs:
            continue
        observes = sorted({o for _, r in runs for o in r["values"]})
        fig, axes = plt.subplots(1, len(observes), squeeze=False, figsize=(5 * len(observes), 3.2))
        for ax, o in zip(axes[0], observes):
            for node_id, run in runs:
                values = [np.nan if v is None else v for v in run["values"].get(o, [])]
                ax.plot(run["times"], values, label=f"node {node_id}", lw=2.5 if node_id == best.id else 1.2)
            ax.set_title(f"{o} under `{scenario}`", fontsize=9)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        save(fig, f"scenario_{scenario}.png")
    return written
