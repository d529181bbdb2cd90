"""The *scaling* scenario's figures: medians per arm, the issue's targets, the projection
to a bigger host and the Markdown report. Pure functions over the scenario's JSON (no
servers), so a saved result re-renders: ``python -m benchmarks.scaling --report FILE``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

# CPU components of an arm, in the order the tables show them; "total" is their sum (the
# benchmark's own process, which publishes and samples, is reported apart and not in it).
COMPONENTS = ("workers", "postgresql", "nats-server")
LOCK_SHARE_TARGET = 0.05  # lock-wait share with 4 workers
CPU_SPREAD_TARGET = 0.10  # worker CPU per event, 4 workers against 1


def group_key(arm: dict[str, Any]) -> tuple[str, bool, int, int, int]:
    """(code, hot tenant, workers, slots, pipelines): arms repeated with the same key are
    one group. ``pipelines`` > 1: the control arm of that many independent 1-worker
    pipelines, each with its own database and stream (results saved before it existed
    have one pipeline)."""
    return (arm["code"], bool(arm["hot_tenant"]), int(arm["workers"]), int(arm["slots"]),
            int(arm.get("pipelines", 1)))  # fmt: skip


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(vals) if vals else None


def groups(arms: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median figures of each (code, hot, workers, slots) over its repeats, in first-run
    order. A group's ``runs`` lists every repeat's events/s (stored and searchable)."""
    by: dict[tuple[str, bool, int, int, int], list[dict[str, Any]]] = {}
    for arm in arms:
        by.setdefault(group_key(arm), []).append(arm)
    out = []
    for (code, hot, workers, slots, pipelines), runs in by.items():
        cpu_keys = {k for r in runs for k in r["cpu_us_per_event"]}
        out.append({
            "code": code, "hot_tenant": hot, "workers": workers, "slots": slots,
            "pipelines": pipelines, "repeats": len(runs),
            "events_per_s": _median(r["events_per_s"] for r in runs),
            "searchable_per_s": _median(r["searchable_per_s"] for r in runs),
            "runs_per_s": [round(r["events_per_s"]) for r in runs],
            "runs_searchable_per_s": [round(r["searchable_per_s"] or 0) for r in runs],
            "lock_share": _median(r["lock"]["share"] for r in runs),
            "lock_samples": sum(r["lock"]["samples"] for r in runs),
            "lock_kinds": _lock_kinds(runs),
            "cpu_us_per_event": {k: _median(r["cpu_us_per_event"].get(k) for r in runs)
                                 for k in sorted(cpu_keys)},
            "worker_process_us": _median_list([r["worker_process_us"] for r in runs]),
            "worker_own": {k: _median_list([[w[k] or 0.0 for w in r.get("worker_own", [])]
                                            for r in runs], 3 if k == "share" else 1)
                           for k in ("share", "us_per_own_event", "events_per_flush")},
            "cores_busy": _median(r["cores_busy"] for r in runs),
            "other_cores_busy": _median(r.get("other_cores_busy") for r in runs),
        })  # fmt: skip
    return out


def _lock_kinds(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median share of active backend samples per heavyweight-lock wait event (``Lock:
    transactionid``, ``Lock:tuple``: row locks; ``Lock:extend``: relation extension)."""
    kinds = {k for r in runs for k in r["lock"].get("by_wait", {}) if k.startswith("Lock:")}
    out = {k[5:]: _median(r["lock"]["by_wait"].get(k, 0.0) for r in runs) for k in kinds}
    return {k: v for k, v in sorted(out.items(), key=lambda kv: -(kv[1] or 0)) if v}


def _median_list(lists: list[list[float]], digits: int = 1) -> list[float]:
    """Element-wise median of equally long lists (each arm's worker processes, busiest
    first), rounded to ``digits``; shorter lists (a process missed) leave their positions
    to the others."""
    width = max((len(x) for x in lists), default=0)
    return [round(_median(x[i] for x in lists if i < len(x)) or 0.0, digits)
            for i in range(width)]  # fmt: skip


def find(gs: Sequence[dict[str, Any]], code: str, workers: int, slots: int,
         hot: bool = False, pipelines: int = 1) -> dict[str, Any] | None:  # fmt: skip
    """The group of ``code`` with ``workers`` processes and ``slots`` flush slots (in
    ``pipelines`` independent pipelines: 1, or the control arm's count)."""
    want = (code, hot, workers, slots, pipelines)
    for g in gs:
        if (g["code"], g["hot_tenant"], g["workers"], g["slots"], _lanes(g)) == want:
            return g
    return None


def _lanes(g: dict[str, Any]) -> int:
    return int(g.get("pipelines", 1))


def _one_and_most(gs: Sequence[dict[str, Any]], sweep_slots: int, code: str
                  ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:  # fmt: skip
    """``code``'s many-tenant group with 1 worker, and the one with the most workers, at
    ``sweep_slots`` flush slots (None where not run)."""
    sweep = [g for g in gs if g["code"] == code and not g["hot_tenant"]
             and g["slots"] == sweep_slots and _lanes(g) == 1]  # fmt: skip
    return find(gs, code, 1, sweep_slots), max(sweep, key=lambda g: g["workers"], default=None)


def targets(gs: Sequence[dict[str, Any]], sweep_slots: int,
            code: str = "new") -> list[dict[str, Any]]:  # fmt: skip
    """The issue's done-when checks that this run measured, for ``code`` (``base`` beside).

    Each: ``code``, ``what``, ``value``, ``base`` (None when not run), ``goal``, ``unit``
    and ``met``.
    """
    out: list[dict[str, Any]] = []

    def add(what: str, value: float, base: float | None, goal: str, unit: str,
            met: bool) -> None:  # fmt: skip
        out.append({"code": code, "what": what, "value": value, "base": base, "goal": goal,
                    "unit": unit, "met": met})  # fmt: skip

    one, most = _one_and_most(gs, sweep_slots, code)
    if most and most["workers"] > 1 and most["lock_share"] is not None:
        base = find(gs, "base", most["workers"], sweep_slots)
        add(f"lock-wait share, {most['workers']} workers", most["lock_share"],
            base and base["lock_share"], f"<= {LOCK_SHARE_TARGET:.0%}", "share",
            most["lock_share"] <= LOCK_SHARE_TARGET)  # fmt: skip
    for hot in (False, True):
        a, b = find(gs, code, 1, sweep_slots, hot), find(gs, code, 2, sweep_slots, hot)
        if a and b and a["events_per_s"] and b["events_per_s"]:
            ratio = b["events_per_s"] / a["events_per_s"]
            base = _ratio(find(gs, "base", 2, sweep_slots, hot),
                          find(gs, "base", 1, sweep_slots, hot), "events_per_s")  # fmt: skip
            add("2 workers / 1 worker, events/s" + (" (hot tenant)" if hot else ""), ratio,
                base, ">= 1.00", "ratio", ratio >= 1.0)  # fmt: skip
    if one and most and most["workers"] > 1:
        w1, wn = one["cpu_us_per_event"].get("workers"), most["cpu_us_per_event"].get("workers")
        if w1 and wn:
            base = _ratio(find(gs, "base", most["workers"], sweep_slots),
                          find(gs, "base", 1, sweep_slots), "cpu_us_per_event.workers")  # fmt: skip
            add(f"worker CPU µs/event, {most['workers']} workers / 1 worker - 1", wn / w1 - 1,
                None if base is None else base - 1, f"within ±{CPU_SPREAD_TARGET:.0%}",
                "change", abs(wn / w1 - 1) <= CPU_SPREAD_TARGET)  # fmt: skip
    base1 = find(gs, "base", 1, sweep_slots)
    if one and base1 and one["searchable_per_s"] and base1["searchable_per_s"]:
        value, base = one["searchable_per_s"], base1["searchable_per_s"]
        add("1 worker, events/s until stored and searchable (medians)", value, base,
            ">= base", "rate", value >= base)  # fmt: skip
    return out


def contention(gs: Sequence[dict[str, Any]], sweep_slots: int,
               code: str = "new") -> dict[str, Any] | None:  # fmt: skip
    """How much dearer each process's CPU per event is with the most workers than with
    one, for ``code``: ``{"workers": n, "ratios": {component: most / one}}``, or None.

    nats-server is the control: the messages, deliveries and acks it handles per event
    do not depend on how many workers share them (only how its socket writes batch), so
    its rise measures what sharing the host's cores among more processes costs every
    process, and the workers' own rise beyond it is what more workers cost in our code.
    """
    one, most = _one_and_most(gs, sweep_slots, code)
    if one is None or most is None or most["workers"] < 2:
        return None
    ratios = {k: r for k in COMPONENTS
              if (r := _ratio(most, one, f"cpu_us_per_event.{k}")) is not None}  # fmt: skip
    return {"code": code, "workers": most["workers"], "ratios": ratios} if ratios else None


def independence(gs: Sequence[dict[str, Any]], sweep_slots: int,
                 code: str = "new") -> dict[str, Any] | None:  # fmt: skip
    """The workers' rise in CPU per event from 1 worker to n, split in two by the control
    arm of n independent 1-worker pipelines (each its own database, stream and n-th of
    the events; the same PostgreSQL and nats-server): ``host`` = independent / one is
    what n busy worker processes on this host cost with no coordination between them
    (they share only the cores and the servers), ``own`` = shared / independent what
    sharing one stream and the tenants among n workers costs beyond that (bucket claims,
    flushes of tenant slices). None unless all three groups were run (largest n)."""
    one = find(gs, code, 1, sweep_slots)
    cands = sorted({g["workers"] for g in gs if g["code"] == code and _lanes(g) > 1})
    for n in reversed(cands):
        shared, indep = find(gs, code, n, sweep_slots), find(gs, code, n, sweep_slots,
                                                              pipelines=n)  # fmt: skip
        w = [g and g["cpu_us_per_event"].get("workers") for g in (one, shared, indep)]
        if all(w):
            w1, wn, wi = w
            return {"code": code, "workers": n, "one": w1, "shared": wn, "independent": wi,
                    "rise": wn / w1, "host": wi / w1, "own": wn / wi}  # fmt: skip
    return None


def independence_text(c: dict[str, Any] | None) -> list[str]:
    """The control paragraph: the workers' rise split into the host's part and ours."""
    if not c:
        return []
    n = c["workers"]
    return [
        f"**Independent pipelines control** (`{c['code']}`, worker CPU µs per event): "
        f"1 worker {c['one']:.1f}; {n} workers sharing one stream {c['shared']:.1f} "
        f"(x{c['rise']:.2f}); {n} independent 1-worker pipelines, each with its own "
        f"database, stream and 1/{n} of the events, {c['independent']:.1f} "
        f"(x{c['host']:.2f}). With no coordination at all, {n} worker processes on this "
        f"host cost x{c['host']:.2f} per event: that part is the host (the cores and "
        f"servers they share); sharing one stream and the tenants among them (bucket "
        f"claims, flushes of tenant slices) is x{c['own']:.2f} beyond it.",
        "",
    ]


def contention_text(c: dict[str, Any] | None) -> list[str]:
    """The control paragraph: every process's CPU per event, most workers against one."""
    if not c:
        return []
    parts = ", ".join(f"{k} x{r:.2f}" for k, r in c["ratios"].items())
    return [
        f"**Host contention control** (`{c['code']}`, {c['workers']} workers against "
        f"1, CPU per event): {parts}. nats-server handles the same messages, "
        "deliveries and acks per event whatever the number of workers; its rise is "
        "what sharing the cores among more processes costs every process, and the "
        "workers' rise beyond it is what more workers cost in the pipeline itself.",
        "",
    ]


def _ratio(num: dict[str, Any] | None, den: dict[str, Any] | None, path: str) -> float | None:
    def get(g: dict[str, Any] | None) -> float | None:
        v: Any = g
        for part in path.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        return v if isinstance(v, int | float) else None

    a, b = get(num), get(den)
    return a / b if a is not None and b else None


def projection(gs: Sequence[dict[str, Any]], sweep_slots: int, cores: int = 16,
               code: str = "new") -> dict[str, Any] | None:  # fmt: skip
    """What ``cores`` cores would reach, from ``code``'s measured CPU per event.

    Model (a projection, not a measurement): ingest is CPU-bound, so the host reaches
    ``cores * 1e6 / total µs per event``, derated by the lock-wait share measured with the
    most workers (time a flush's backend cannot work). Computed from the 1-worker split
    (least contention) and from the most-workers split (which carries the cost of more
    processes); each needs at least ``rate * worker µs / 1e6`` worker processes (one
    Python thread each). A hot tenant is bound by its chain (one flush at a time), not by
    cores: its measured rate is carried over as it is.
    """
    news = [g for g in gs if g["code"] == code and not g["hot_tenant"] and _lanes(g) == 1
            and g["slots"] == sweep_slots and g["cpu_us_per_event"].get("total")]  # fmt: skip
    if not news:
        return None
    news.sort(key=lambda g: g["workers"])
    share = news[-1]["lock_share"] or 0.0
    cases = []
    for g in {id(x): x for x in (news[0], news[-1])}.values():
        cpu = g["cpu_us_per_event"]
        rate = cores * 1e6 / cpu["total"] * (1 - share)
        cases.append({
            "from_workers": g["workers"], "cpu_us_per_event": cpu, "events_per_s": rate,
            "worker_processes": math.ceil(rate * cpu.get("workers", 0) / 1e6),
            "postgresql_cores": rate * cpu.get("postgresql", 0) / 1e6,
            "nats_cores": rate * cpu.get("nats-server", 0) / 1e6,
        })  # fmt: skip
    hot = find(gs, code, 1, sweep_slots, hot=True)
    return {"code": code, "cores": cores, "lock_share": share, "cases": cases,
            "hot_tenant_per_s": hot and hot["events_per_s"]}  # fmt: skip


def _n(v: float | None, fmt: str = "{:,.0f}") -> str:
    return "—" if v is None else fmt.format(v)


def _cpu(cpu: dict[str, float | None]) -> str:
    parts = [_n(cpu.get(k), "{:.1f}") for k in COMPONENTS]
    return " / ".join(parts) + f" = {_n(cpu.get('total'), '{:.1f}')}"


def per_control(cpu: dict[str, float | None]) -> dict[str, float | None]:
    """The workers' and PostgreSQL's CPU per event in units of nats-server's, in the same
    arm: nats-server's work per event (store, deliver, ack) is the same for every code,
    so on a host whose speed drifts between arms these ratios compare codes where the
    microseconds alone measure the host."""
    control = cpu.get("nats-server")
    if not control:
        return {"workers": None, "postgresql": None}
    return {k: (v / control if (v := cpu.get(k)) is not None else None)
            for k in ("workers", "postgresql")}  # fmt: skip


def _control(cpu: dict[str, float | None]) -> str:
    r = per_control(cpu)
    return f"{_n(r['workers'], '{:.2f}')} / {_n(r['postgresql'], '{:.2f}')}"


def _own(g: dict[str, Any]) -> str:
    """``share / µs / events per flush`` of each worker process, busiest first."""
    own = g.get("worker_own") or {}
    rows = zip(own.get("share", []), own.get("us_per_own_event", []),
               own.get("events_per_flush", []), strict=False)  # fmt: skip
    return "; ".join(f"{s:.0%} / {us:.1f} / {n:,.0f}" for s, us, n in rows) or "—"


def _others(g: dict[str, Any]) -> str:
    other = g.get("other_cores_busy")
    return f" (+{other:.2f} others)" if other and other >= 0.05 else ""


def _lock(g: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {v:.1%}" for k, v in list(g.get("lock_kinds", {}).items())[:2])
    return _n(g["lock_share"], "{:.1%}") + (f" ({kinds})" if kinds else "")


def table(gs: Sequence[dict[str, Any]]) -> list[str]:
    """The Markdown table of every group (medians)."""
    lines = ["| code | tenants | workers | slots | events/s stored | events/s stored + "
             "searchable | CPU µs/event: workers / PostgreSQL / nats-server = total | "
             "workers / PostgreSQL per nats-server µs | "
             "µs/event per worker process | each worker: share of events, CPU µs per event "
             "it stored, events per flush | cores busy | lock-wait share | runs (events/s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for g in gs:
        workers = f"{g['workers']} independent" if _lanes(g) > 1 else str(g["workers"])
        lines.append(
            f"| {g['code']} | {'1 (hot)' if g['hot_tenant'] else 'many'} | {workers} "
            f"| {g['slots']} | {_n(g['events_per_s'])} | {_n(g['searchable_per_s'])} "
            f"| {_cpu(g['cpu_us_per_event'])} | {_control(g['cpu_us_per_event'])} "
            f"| {', '.join(f'{x:.1f}' for x in g['worker_process_us']) or '—'} "
            f"| {_own(g)} "
            f"| {_n(g['cores_busy'], '{:.2f}')}{_others(g)} | {_lock(g)} "
            f"| {', '.join(f'{x:,}' for x in g['runs_per_s'])} |"
        )
    return lines


_TARGET_FORMATS = {"share": "{:.1%}", "change": "{:+.1%}", "ratio": "{:.2f}", "rate": "{:,.0f}"}


def _fmt_target(t: dict[str, Any], v: float | None) -> str:
    return "—" if v is None else _TARGET_FORMATS[t["unit"]].format(v)


def projection_text(p: dict[str, Any] | None) -> list[str]:
    """The projection paragraph (labelled as one)."""
    if not p:
        return []
    lines = [f"**Projection** (not measured) for {p['cores']} cores, from this run's CPU "
             f"per event of `{p['code']}`: ingest is CPU-bound, so a host reaches about "
             f"cores * 10^6 / (total µs per event), derated by the lock-wait share "
             f"({p['lock_share']:.1%}) measured with the most workers:", ""]  # fmt: skip
    for c in p["cases"]:
        cpu = c["cpu_us_per_event"]
        lines.append(
            f"- from the {c['from_workers']}-worker split ({_cpu(cpu)} µs): "
            f"**≈ {c['events_per_s']:,.0f} events/s**, needing ≥ {c['worker_processes']} "
            f"worker processes, ≈ {c['postgresql_cores']:.1f} cores of PostgreSQL and "
            f"≈ {c['nats_cores']:.1f} of nats-server;"
        )
    if p.get("hot_tenant_per_s"):
        hot = p["hot_tenant_per_s"]
        lines.append(f"- one hot tenant stays near its measured {hot:,.0f} events/s whatever "
                     "the cores: its chain admits one flush at a time.")  # fmt: skip
    return [*lines, ""]


def markdown(result: dict[str, Any]) -> str:
    """The scenario's Markdown report."""
    cfg, gs = result["config"], result["groups"]
    m = result.get("machine", {})
    lines = [f"# Scaling, {result.get('started', '')}", "",
             f"Command: `{result.get('command', '')}`", "",
             f"{m.get('cores', '?')} cores, {m.get('postgresql', '?')}, nats-server "
             f"{m.get('nats_server', '?')}, Python {m.get('python', '?')}; "
             f"{cfg['events']:,} events per arm ({cfg['tenants']:,} tenants; hot tenant: 1), "
             f"batches of {cfg['batch']:,}, {cfg['repeats']} repeat(s), codes alternated "
             "arm by arm.", ""]  # fmt: skip
    for name, tree in result.get("trees", {}).items():
        fast = f", fast path {tree['fastpath']}" if tree.get("fastpath") else ""
        lines.append(f"- {name}: {tree['describe']} (`pipeline.flush` imported from "
                     f"`{tree['flush_module']}`{fast}); search: {tree['search']}")  # fmt: skip
    lines += ["", *table(gs), ""]
    ts = result.get("targets", [])
    if ts:
        lines += ["| target | code | value | base | goal | verdict |", "|---|---|---|---|---|---|"]
        for t in ts:
            verdict = "met" if t["met"] else "**missed**"
            lines.append(f"| {t['what']} | {t['code']} | {_fmt_target(t, t['value'])} | "
                         f"{_fmt_target(t, t['base'])} | {t['goal']} | {verdict} |")  # fmt: skip
        lines.append("")
    for c in result.get("contention", {}).values():
        lines += contention_text(c)
    for c in result.get("independence", {}).values():
        lines += independence_text(c)
    for p in result.get("projections", {}).values():
        lines += projection_text(p)
    return "\n".join(lines) + "\n"
