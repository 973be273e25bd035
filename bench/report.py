"""BENCHMARKS.md and the plots in bench/results/ from the result files of the last run.

python bench/report.py            # reads bench/results/*.json, writes BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from common import RESULTS  # noqa: E402

ROOT = RESULTS.parent.parent
DPI = 72
SIZE = (6.4, 3.6)

Json = dict[str, Any]


def load(name: str) -> Json | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def ms(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def save(fig: Any, name: str) -> str:
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return f"bench/results/{name}.png"


# ----------------------------------------------------------------------------- shapes
SCENARIO_TEXT = {
    "steady": "steady state",
    "first": "first report",
    "rollover": "period rollover",
}


def shape_label(shape: str) -> str:
    return shape.replace("x", "×")


SETTING_TEXT = {
    "production": "production: fsync=on, synchronous_commit=on, full_page_writes=on",
    "cpu-only": "CPU-only: fsync=off, synchronous_commit=off, full_page_writes=off",
}
SHAPE_MODES = ("on", "seed", "upsert", "row")
STEADY_GOAL, FRESH_GOAL = 0.90, 0.80  # production, on/off
# the keys of a result row holding one value per mode
PER_MODE = (
    "runs",
    "median_seconds_per_report",
    "ratio_to_off",
    "median_cpu_seconds_per_report",
    "cpu_ratio_to_off",
    "paired_ratios",
)


def shape_rows(d: Json) -> list[Json]:
    """The result rows of a shapes.json, older formats read as the current one: a file
    without settings per cell (format 1) measured in the server's settings, and its mode
    ``seed`` was the per-series upsert alone (``upsert`` now)."""
    if d.get("format", 1) >= 2:
        return list(d["results"])
    server = d.get("server") or {}
    durable = server.get("fsync") == "on" and server.get("synchronous_commit") == "on"
    rows = []
    for r in d["results"]:
        r = dict(r)
        for key in PER_MODE:
            if r.get(key):
                r[key] = {("upsert" if m == "seed" else m): v for m, v in r[key].items()}
        r["setting"] = "production" if durable else "cpu-only"
        r["server_settings"] = {
            k: server.get(k, "?") for k in ("fsync", "synchronous_commit", "full_page_writes")
        }
        rows.append(r)
    return rows


def goal(r: Json) -> float:
    """The goal of a cell's on/off ratio in production."""
    return STEADY_GOAL if r["scenario"] == "steady" else FRESH_GOAL


def shapes_section(d: Json, before: Json | None) -> tuple[list[str], list[tuple[str, str, str]]]:
    rows = shape_rows(d)
    modes = [m for m in SHAPE_MODES if any(m in r["ratio_to_off"] for r in rows)]
    settings = [s for s in SETTING_TEXT if any(r["setting"] == s for r in rows)]
    base = min(r["clients"] for r in rows)
    more = sorted({r["clients"] for r in rows} - {base})
    old = {}
    if before and before.get("finished_at") != d.get("finished_at"):  # not the same run
        old = {
            (r["shape"], r["scenario"], r["clients"], r["setting"]): r for r in shape_rows(before)
        }
    format1 = d.get("format", 1) < 2
    out = [
        "## 1. Ingest by report shape",
        "",
        f"Report shapes real suites send, benchmarks × measures; for each shape "
        f"{d['organizations_per_shape']} organizations (a project each, with the shape's "
        "benchmarks and measures), every report a whole-report transaction "
        "(`INSERT` report, `INSERT … SELECT` report_benchmark and metric rows; no "
        "`variant_id`) driven by pgbench. Scenarios: **first** = every report goes to a testbed "
        "that never reported (fresh testbeds in the same organizations every run); **steady** "
        f"= the {d['steady_testbeds_per_organization']} testbeds per organization that already "
        "reported the same shape in the current billing period, round robin; **rollover** = "
        "fresh testbeds whose only history is one report of the same shape in the previous "
        "billing period (written before the run by a privileged session with "
        "`active_series.allow_explicit_created = on` and `created` one hour before "
        "`current_period()` starts, every mechanism recording it), i.e. each testbed's first "
        "report after its period changed.",
        "",
    ]
    if format1:
        out += [
            "(This result file predates the settings and the seed as shipped: its cells ran "
            "in the server's settings only, and its `upsert` column was then called `seed`; "
            "`make bench BENCH_ONLY=ingest` measures what follows.)",
            "",
        ]
    out += [
        "**Settings.** Every cell is measured in two server settings side by side, on a "
        "throwaway server of its own (`bench/shapes.py --server`; the test servers pin fsync "
        "off on their command line): **production** (fsync=on, synchronous_commit=on, "
        "full_page_writes=on; the headline) and **CPU-only** (fsync=off, "
        "synchronous_commit=off, full_page_writes=off: the disk taken out, what the CPU "
        "costs). The settings switch by `ALTER SYSTEM` and a reload between runs (all three "
        "are reload settings) and a new connection's `SHOW` confirms them before the runs; "
        "the result file records what `SHOW` gave per cell. In each repeat of a cell both "
        "settings run, their order alternating between repeats.",
        "",
        "**Modes**, alternating in rotating order within each repeat and setting: `off` = "
        "tracking off (the reference); `on` = active_series; `seed` = **the seed as it "
        "shipped**, tracking off: its per-series `last_seen` upsert inside the ingest "
        "statement (the metric `INSERT` is a data-modifying CTE feeding `INSERT INTO "
        "series_last_seen … ON CONFLICT DO UPDATE SET last_seen = greatest(…)`), then, after "
        "the commit and on the same connection, its count of the organization's active "
        "series (`SELECT count(*) … WHERE organization_id = $org AND last_seen >= "
        "<period start>`, a range scan of an `(organization_id, last_seen)` index); "
        "context: `upsert` = that per-series upsert alone, as one set-based statement at the "
        "end of the transaction, no count; `row` = a plain row trigger doing the upsert. The "
        "baseline table keys on (testbed, benchmark, measure) and has no periods: for the "
        "baseline modes a rollover is a steady report, a first report inserts new rows; it "
        "holds the steady testbeds' series and each run's own (a run's fresh testbeds are "
        "removed after it), so the seed's count scans the same rows whatever ran before. "
        + (
            f"First and rollover run at {', '.join(map(str, more))} clients too (modes "
            "`off`, `on`, `seed`): more clients than the machine's cores, contention is the "
            "question."
            if more
            else ""
        ),
        "",
        "Every run starts from emptied report/report_benchmark/metric tables and a checkpoint; "
        f"each client's first {d['warmup_transactions_per_client']} transactions are not "
        "counted. Figures: the median time per report of "
        f"{d['repeats']} repeat{'s' if d['repeats'] > 1 else ''} "
        "(wall time of the counted transactions ÷ their number; context only), and the ratio "
        "off ÷ mode = the mode's throughput relative to tracking off, measured side by side "
        "(small: the range of the ratios within each repeat, a measure of the noise; a status "
        "is flagged noisy when the repeats disagree with it: re-measure such cells with more "
        "repeats, e.g. `BENCH_REPEATS=7`). `on/off CPU` (cross-check, not a target): the "
        "same ratio of the CPU time per transaction (server processes and pgbench), less "
        "sensitive to other load on the machine than wall time. `run` = reports per "
        "first/rollover run (each to its own testbed) or seconds per steady run. Judged: "
        "`on` ≥ `seed` in every cell, both settings (must); production `on/off` against the "
        "goal of the cell (steady ≥ 0.90, first and rollover ≥ 0.80, at "
        f"{base} clients)"
        + (f"; {', '.join(map(str, more))} vs {base} clients below." if more else "."),
        "",
    ]

    def pairs_of(r: Json, mode: str, versus: str = "off") -> list[float]:
        """versus ÷ mode time per report, within each repeat."""
        runs = r.get("runs") or {}
        return [
            a["per_report"] / b["per_report"]
            for a, b in zip(runs.get(versus, []), runs.get(mode, []), strict=False)
        ]

    def spread(r: Json) -> float:
        pairs = pairs_of(r, "on")
        return max(pairs) - min(pairs) if len(pairs) > 1 else 0.0

    def at_least(r: Json, target: float) -> str:
        """on/off against a goal; flagged when the repeats straddle it."""
        text = status(r["ratio_to_off"]["on"] >= target)
        pairs = pairs_of(r, "on")
        if len(pairs) > 1 and min(pairs) < target <= max(pairs):
            text += " (noisy: the repeats straddle the goal)"
        return text

    def on_beats_seed(r: Json) -> bool:
        return r["ratio_to_off"]["on"] >= r["ratio_to_off"]["seed"]

    def versus_seed(r: Json) -> str:
        if "seed" not in r["ratio_to_off"]:
            return "n/a"
        text = status(on_beats_seed(r))
        pairs = pairs_of(r, "on", "seed")  # seed ÷ on time per report: ≥ 1 when on is faster
        if len(pairs) > 1 and min(pairs) < 1 <= max(pairs):
            text += " (noisy: the repeats disagree)"
        return text

    def cell(r: Json, mode: str) -> str:
        if mode not in r["ratio_to_off"]:
            return "–"
        pairs = pairs_of(r, mode)
        text = f"{r['ratio_to_off'][mode]:.2f}"
        if len(pairs) > 1:
            text += f" <sub>{min(pairs):.2f}–{max(pairs):.2f}</sub>"
        return text

    cpu_col = all(r.get("cpu_ratio_to_off") for r in rows)
    for setting in settings:
        sel = [r for r in rows if r["setting"] == setting]
        goals = setting == "production"
        before_col = any((r["shape"], r["scenario"], r["clients"], setting) in old for r in sel)
        shown = {k: v for k, v in (sel[0].get("server_settings") or {}).items() if v != "?"}
        seed_col = any("seed" in r["ratio_to_off"] for r in sel)
        out += [
            f"### {SETTING_TEXT[setting][:1].upper()}{SETTING_TEXT[setting][1:]}"
            + (" (headline)" if goals else ""),
            "",
            "`SHOW` in the runs: " + ", ".join(f"{k}={v}" for k, v in shown.items()) + ".",
            "",
            "| shape | scenario | clients | run | ms/report off (context) | "
            + " | ".join(f"{m}/off" for m in modes)
            + (" | on/off CPU" if cpu_col else "")
            + (" | on/off before" if before_col else "")
            + (" | goal | on vs goal" if goals else "")
            + (" | on ≥ seed" if seed_col else "")
            + " |",
            "|---|---|---:|---:|---:|"
            + "---:|" * (len(modes) + cpu_col + before_col)
            + ("---:|---|" if goals else "")
            + ("---|" if seed_col else ""),
        ]
        for r in sel:
            prev = old.get((r["shape"], r["scenario"], r["clients"], setting))
            judged = goals and r["clients"] == base
            out.append(
                f"| {shape_label(r['shape'])} | {r['scenario']} | {r['clients']} | {r['run']} | "
                f"{r['median_seconds_per_report']['off'] * 1e3:.2f} | "
                + " | ".join(cell(r, m) for m in modes)
                + (f" | {r['cpu_ratio_to_off']['on']:.2f}" if cpu_col else "")
                + (
                    (f" | {prev['ratio_to_off']['on']:.2f}" if prev else " | –")
                    if before_col
                    else ""
                )
                + (
                    (f" | ≥ {goal(r):.2f} | {at_least(r, goal(r))}" if judged else " | – | –")
                    if goals
                    else ""
                )
                + (f" | {versus_seed(r)}" if seed_col else "")
                + " |"
            )
        out.append("")
        if before_col and before:
            out += [
                f"`on/off before`: the same cell on the previous hot path (commit "
                f"{before.get('commit')}, run finished {before.get('finished_at')}, "
                "`bench/results/shapes-before.json`).",
                "",
            ]

    # more clients vs the base count: first and rollover, per shape and setting
    def find(shape: str, scenario: str, clients: int, setting: str) -> Json | None:
        return next(
            (
                r
                for r in rows
                if (r["shape"], r["scenario"], r["clients"], r["setting"])
                == (shape, scenario, clients, setting)
            ),
            None,
        )

    contention: list[tuple[Json, Json, float, bool]] = []
    for n in more:
        for r in rows:
            if r["clients"] != n or r["scenario"] == "steady":
                continue
            two = find(r["shape"], r["scenario"], base, r["setting"])
            if two:
                allowance = max(spread(r), spread(two))
                ok = r["ratio_to_off"]["on"] >= two["ratio_to_off"]["on"] - allowance
                contention.append((two, r, allowance, ok))
    if contention:
        out += [
            f"### {', '.join(map(str, more))} clients vs {base}: first report and rollover",
            "",
            f"Rule: at more clients, tracking is **no worse** relative to tracking off when "
            f"its median on/off ratio is at least the {base}-client cell's median minus the "
            "repeats' spread (the larger of the two cells' ranges of per-repeat on/off "
            "ratios; 0 with one repeat): a difference inside that range cannot be told from "
            "noise, so only a drop beyond it fails.",
            "",
            f"| shape | scenario | setting | on/off at {base} | on/off at more | clients "
            "| allowed drop (spread) | no worse |",
            "|---|---|---|---:|---:|---:|---:|---|",
        ]
        for two, r, allowance, ok in contention:
            out.append(
                f"| {shape_label(r['shape'])} | {r['scenario']} | {r['setting']} | "
                f"{cell(two, 'on')} | {cell(r, 'on')} | {r['clients']} | {allowance:.2f} | "
                f"{status(ok)} |"
            )
        out.append("")

    # the plot: production (else the setting measured), the base clients, a panel per scenario
    plot_setting = settings[0]
    scenarios = [s for s in SCENARIO_TEXT if any(r["scenario"] == s for r in rows)]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(
        1, len(scenarios), figsize=(SIZE[0] * 1.3, SIZE[1]), sharey=True, squeeze=False
    )
    width = 0.8 / len(modes)
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        chosen = {
            r["shape"]: r
            for r in rows
            if r["scenario"] == scenario and r["clients"] == base and r["setting"] == plot_setting
        }
        xs = range(len(shapes))
        for i, m in enumerate(modes):
            ys = [chosen[s]["ratio_to_off"].get(m, 0) if s in chosen else 0 for s in shapes]
            ax.bar([x + (i - (len(modes) - 1) / 2) * width for x in xs], ys, width, label=m)
        for s_i, s in enumerate(shapes):
            if s in chosen and plot_setting == "production":
                t = goal(chosen[s])
                ax.hlines(t, s_i - 0.45, s_i + 0.45, color="black", lw=1, ls="--")
        ax.set_xticks(list(xs), [shape_label(s) for s in shapes])
        ax.set_title(SCENARIO_TEXT[scenario])
        ax.set_xlabel("benchmarks × measures")
    axes[0][0].set_ylabel("throughput / tracking off")
    axes[0][0].set_ylim(0, 1.3)
    axes[0][-1].legend(fontsize=6, loc="upper right", ncol=2)
    img = save(fig, "shapes")
    out += [
        f"![shapes]({img}) ({SETTING_TEXT[plot_setting]}; {base} client"
        f"{'s' if base > 1 else ''}"
        + ("; dashed: the cell's goal" if plot_setting == "production" else "")
        + ")",
        "",
    ]

    # the summary rows: the musts and goals of the shape matrix
    def listing(sel: list[Json]) -> str:
        return ", ".join(f"{shape_label(r['shape'])} {r['ratio_to_off']['on']:.2f}" for r in sel)

    targets: list[tuple[str, str, str]] = []
    for setting in SETTING_TEXT:
        name = SETTING_TEXT[setting].split(":")[0]
        sel = [r for r in rows if r["setting"] == setting and r["clients"] == base]
        has_seed = [r for r in sel if "seed" in r["ratio_to_off"]]
        what = (
            f"Must, {name} ({SETTING_TEXT[setting].split(': ')[1]}): tracking on ≥ the seed as "
            f"shipped in every cell (shapes × steady/first/rollover, {base} clients; ratio to "
            "tracking off)"
        )
        if not has_seed:
            targets.append((what, f"not measured ({setting} seed cells absent)", status(None)))
            continue
        below = [r for r in has_seed if not on_beats_seed(r)]
        extra = [
            r
            for r in rows
            if r["setting"] == setting and r["clients"] != base and "seed" in r["ratio_to_off"]
        ]
        measured = f"{len(has_seed) - len(below)} of {len(has_seed)} cells" + (
            "; below: "
            + ", ".join(
                f"{shape_label(r['shape'])} {r['scenario']} "
                f"{r['ratio_to_off']['on']:.2f} < {r['ratio_to_off']['seed']:.2f}"
                for r in below
            )
            if below
            else ""
        )
        if extra:
            measured += (
                f" (context, {', '.join(map(str, more))} clients: "
                f"{sum(on_beats_seed(r) for r in extra)} of {len(extra)})"
            )
        targets.append((what, measured, status(not below)))
    for setting in SETTING_TEXT:
        name = SETTING_TEXT[setting].split(":")[0]
        compared = [c for c in contention if c[1]["setting"] == setting]
        what = (
            f"Must, {name}: first and rollover at {', '.join(map(str, more)) or 'more'} clients "
            f"no worse, relative to tracking off, than at {base} (on/off at more ≥ on/off at "
            f"{base} − the repeats' spread)"
        )
        if not compared:
            targets.append((what, "not measured", status(None)))
            continue
        worse = [c for c in compared if not c[3]]
        targets.append(
            (
                what,
                f"{len(compared) - len(worse)} of {len(compared)} cells"
                + (
                    "; worse: "
                    + ", ".join(
                        f"{shape_label(r['shape'])} {r['scenario']} {r['ratio_to_off']['on']:.2f}"
                        f" at {r['clients']} vs {two['ratio_to_off']['on']:.2f}"
                        f" (allowed drop {a:.2f})"
                        for two, r, a, _ in worse
                    )
                    if worse
                    else ""
                ),
                status(not worse),
            )
        )
    production = [r for r in rows if r["setting"] == "production" and r["clients"] == base]
    steady = [r for r in production if r["scenario"] == "steady"]
    targets.append(
        (
            f"Goal, production: steady state ≥ 0.90 of tracking-off throughput at every shape "
            f"({base} clients)",
            listing(steady) if steady else "not measured in production",
            status(all(r["ratio_to_off"]["on"] >= goal(r) for r in steady) if steady else None),
        )
    )
    fresh = [r for r in production if r["scenario"] in ("first", "rollover")]
    targets.append(
        (
            "Goal, production: first report and period rollover ≥ 0.80 of tracking-off "
            f"throughput at every shape ({base} clients)",
            "; ".join(
                f"{s}: {listing([r for r in fresh if r['scenario'] == s])}"
                for s in ("first", "rollover")
                if any(r["scenario"] == s for r in fresh)
            )
            or "not measured in production",
            status(all(r["ratio_to_off"]["on"] >= goal(r) for r in fresh) if fresh else None),
        )
    )
    return out, targets


# ----------------------------------------------------------------------------- ingest
def ingest_section(d: Json) -> tuple[list[str], list[tuple[str, str, str]]]:
    # mode "seed" of older files is the per-series upsert alone ("upsert" now)
    rows = [
        {
            **r,
            **{
                k: {("upsert" if m == "seed" else m): v for m, v in r[k].items()}
                for k in ("ratio_to_off", "median_tps")
            },
        }
        for r in d["results"]
    ]
    modes = [m for m in ("on", "upsert", "row") if m in rows[0]["ratio_to_off"]]
    out = [
        "## 2. Ingest by report size (INSERT and COPY)",
        "",
        f"Secondary to the shape matrix above; measured at commit {d.get('commit')}. "
        "Throughput of one-report transactions (median of the runs per mode given in the "
        "`runs` column, repeats × seconds, modes alternating in rotating order), as a ratio "
        "to the same ingest with tracking off. `on` = active_series; "
        "`upsert` = a client-side per-series upsert into a `last_seen` table inside the "
        "ingest transaction (tracking off; the seed's upsert alone, without its count); "
        "`row` = a plain row-level trigger doing that upsert. "
        "`insert` = `INSERT … SELECT` driven by pgbench; `copy` = `COPY … FROM STDIN` driven by "
        "a Python client per connection. Each report carries 10 benchmarks (1 at 1 metric) and "
        "goes to one of 4 testbeds that already reported it (steady state).",
        "",
        "| method | metrics/report | clients | runs | tps off (context) | "
        + " | ".join(f"{m}/off" for m in modes)
        + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(modes),
    ]
    for r in rows:
        out.append(
            f"| {r['method']} | {r['metrics_per_report']:,} | {r['clients']} | "
            f"{r.get('repeats', d['repeats'])}×{r.get('seconds_per_run', d['seconds_per_run'])} s"
            f" | {r['median_tps']['off']:.0f} | "
            + " | ".join(f"{r['ratio_to_off'][m]:.2f}" for m in modes)
            + " |"
        )
    methods = sorted({r["method"] for r in rows})
    fig, axes = plt.subplots(1, len(methods), figsize=SIZE, sharey=True, squeeze=False)
    styles = {"on": "o-", "upsert": "s--", "row": "^:"}
    for ax, method in zip(axes[0], methods, strict=True):
        for clients in sorted({r["clients"] for r in rows}):
            sel = [r for r in rows if r["method"] == method and r["clients"] == clients]
            xs = [r["metrics_per_report"] for r in sel]
            for m in modes:
                ax.plot(
                    xs,
                    [r["ratio_to_off"][m] for r in sel],
                    styles[m],
                    label=f"{m}, {clients} client{'s' if clients > 1 else ''}",
                    alpha=1.0 if clients == 1 else 0.55,
                )
        ax.axhline(0.9, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_title(method)
        ax.set_xlabel("metrics per report")
    axes[0][0].set_ylabel("throughput / tracking off")
    axes[0][-1].legend(fontsize=6, loc="lower right")
    img = save(fig, "ingest")
    out += ["", f"![ingest]({img})", ""]
    return out, []


# ----------------------------------------------------------------------------- reads
def reads_section(d: Json) -> tuple[list[str], list[tuple[str, str, str]]]:
    rows = d["results"]
    out = [
        "## 3. Reads",
        "",
        "Per size, two organizations in one database: `disjoint` (10 testbeds reporting their "
        "benchmarks in chunks of 100: disjoint sets) and `overlapping` (100 testbeds, 10 at "
        "10^3, each reporting its whole suite, its first half and each quarter at random "
        "moments: every series in two or three overlapping sets). Series generated set-based, "
        "the cache filled set-based and checked against the from-scratch count (and `verify()` "
        "up to 10^4). Beside it the seed's design, rebuilt from the same metrics: one row per "
        "series with its last_seen, `count(*)` over an index range scan on "
        "`(organization_id, last_seen)`. `period_usage` and `count_active` (and the seed's "
        "count): server-side time per call (a loop of calls in one statement), over the period "
        "`[start, end)` and over its second half `[mid, end)` (a window that cuts the sets); "
        "`period_series`: all rows; from scratch: `count(DISTINCT (testbed, benchmark, "
        f"measure))` over the period's metrics. Medians of {d['repeats']} alternating repeats "
        "(3 at 10^6).",
        "",
        "| series | layout | period_usage | round trip (context) | count_active | seed | "
        "count_active, second half | seed | period_series | from scratch | "
        "period_series / from scratch | period_usage speed-up |",
        "|---:|:--|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m = r["median_seconds"]
        out.append(
            f"| {r['series']:,} | {r.get('layout', 'disjoint')} | {ms(m['period_usage'])} | "
            f"{ms(r['roundtrip_seconds']['period_usage'])} | {ms(m['count_active'])} | "
            f"{ms(m['seed_count']) if 'seed_count' in m else '–'} | "
            f"{ms(m['count_active_cut']) if 'count_active_cut' in m else '–'} | "
            f"{ms(m['seed_count_cut']) if 'seed_count_cut' in m else '–'} | "
            f"{ms(m['period_series'])} | {ms(m['from_scratch'])} | "
            f"{m['period_series'] / m['from_scratch']:.2f} | "
            f"{r['speedup_vs_scratch']['period_usage']:,.0f}× |"
        )
    fig, ax = plt.subplots(figsize=SIZE)
    for layout, marker in (("disjoint", "-"), ("overlapping", ":")):
        sel = [r for r in rows if r.get("layout", "disjoint") == layout]
        if not sel:
            continue
        xs = [r["series"] for r in sel]
        for key, style in (
            ("period_usage", "o"),
            ("count_active", "s"),
            ("seed_count", "d"),
            ("period_series", "^"),
            ("from_scratch", "x"),
        ):
            if key in sel[0]["median_seconds"]:
                ax.plot(
                    xs,
                    [r["median_seconds"][key] for r in sel],
                    style + marker,
                    label=f"{key} ({layout})",
                )
    ax.axhline(1e-3, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("series in the organization's period")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=6)
    img = save(fig, "reads")
    out += ["", f"![reads]({img})", ""]
    big_series = max(r["series"] for r in rows)
    bigs = [r for r in rows if r["series"] == big_series]
    big = bigs[0]
    small = rows[0]
    pu = big["median_seconds"]["period_usage"]
    flat = pu / small["median_seconds"]["period_usage"]
    speed = big["speedup_vs_scratch"]["period_usage"]
    targets = [
        (
            f"period_usage ≤ 1 ms at {big['series']:,} series, flat",
            f"{ms(pu)} server-side ({ms(big['roundtrip_seconds']['period_usage'])} with the "
            f"round trip); {big['series']:,} vs {small['series']:,} series: {flat:.2f}×",
            status(pu <= 1e-3 and flat < 2),
        ),
        (
            f"period_usage ≥ 1,000× faster than from scratch at {big['series']:,}",
            f"{speed:,.0f}×",
            status(speed >= 1000),
        ),
    ]
    if all("ratio_vs_seed" in r for r in bigs):
        ratios = [
            (r.get("layout", "disjoint"), w, r["ratio_vs_seed"][k])
            for r in bigs
            for w, k in (("period", "count_active"), ("second half", "count_active_cut"))
        ]
        targets.append(
            (
                f"count_active ≤ the seed's index range scan at {big_series:,} series",
                "; ".join(f"{layout}, {w}: {x:.2f}×" for layout, w, x in ratios),
                status(all(x <= 1 for _, _, x in ratios)),
            )
        )
        series_ratios = [
            (
                r.get("layout", "disjoint"),
                r["median_seconds"]["period_series"] / r["median_seconds"]["from_scratch"],
            )
            for r in bigs
        ]
        targets.append(
            (
                f"period_series ≤ 1/10 of from scratch at {big_series:,} series",
                "; ".join(f"{layout}: {x:.2f}" for layout, x in series_ratios),
                status(all(x <= 0.1 for _, x in series_ratios)),
            )
        )
    return out, targets


# ----------------------------------------------------------------------------- backfill
def backfill_section(d: Json) -> tuple[list[str], list[tuple[str, str, str]]]:
    rows = d["results"]
    out = [
        "## 4. Backfill",
        "",
        "`CALL active_series.backfill()` (batches of 500 reports) from an empty cache over 90 "
        "days of history (10 organizations, reports of 600 metrics), against the from-scratch "
        "count of every (organization, month) over the same data; peak private memory "
        "(`RssAnon`) of the backend sampled every 50 ms. Counts checked equal.",
        "",
        "| metrics | reports | backfill | metrics/s | from scratch | backfill / scratch | "
        "peak RssAnon |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['metrics']:,} | {r['reports']:,} | {ms(r['backfill_seconds'])} | "
            f"{r['metrics_per_second']:,.0f} | {ms(r['median_scratch_seconds'])} | "
            f"{r['backfill_over_scratch']:.1f}× | {r['peak_rss_anon_kb'] / 1024:.0f} MiB |"
        )
    new = d.get("new_series") or []
    if new:
        out += [
            "",
            "All-new series (one metric per series, reports of 1,000 metrics: one batch holds "
            "every series):",
            "",
            "| series | backfill | series/s | from scratch | peak RssAnon |",
            "|---:|---:|---:|---:|---:|",
        ]
        for r in new:
            out.append(
                f"| {r['series']:,} | {ms(r['backfill_seconds'])} | "
                f"{r['metrics_per_second']:,.0f} | {ms(r['scratch_seconds'])} | "
                f"{r['peak_rss_anon_kb'] / 1024:.0f} MiB |"
            )
    fig, ax = plt.subplots(figsize=SIZE)
    ax.plot(
        [r["metrics"] for r in rows],
        [r["backfill_seconds"] for r in rows],
        "o-",
        label="backfill, history",
    )
    ax.plot(
        [r["metrics"] for r in rows],
        [r["median_scratch_seconds"] for r in rows],
        "x--",
        label="from scratch, history",
    )
    if new:
        ax.plot(
            [r["series"] for r in new],
            [r["backfill_seconds"] for r in new],
            "s-",
            label="backfill, all-new series",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("metrics")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=7)
    img = save(fig, "backfill")
    out += ["", f"![backfill]({img})", ""]
    peaks = [r["peak_rss_anon_kb"] for r in rows]
    targets = [
        (
            "Backfill: throughput vs from scratch; memory bounded",
            f"{rows[-1]['metrics_per_second']:,.0f} metrics/s at {rows[-1]['metrics']:,} "
            f"({rows[-1]['backfill_over_scratch']:.1f}× the time of the from-scratch count); "
            f"peak RssAnon {min(peaks) / 1024:.0f}–{max(peaks) / 1024:.0f} MiB"
            + (
                f"; all-new series: {new[0]['metrics_per_second']:,.0f}/s at "
                f"{new[0]['series']:,}, {new[-1]['metrics_per_second']:,.0f}/s at "
                f"{new[-1]['series']:,}"
                if new
                else ""
            ),
            "memory **met**; throughput **superlinear for all-new series**"
            if new and new[-1]["metrics_per_second"] < new[0]["metrics_per_second"] / 2
            else "**met**",
        )
    ]
    return out, targets


# ----------------------------------------------------------------------------- relay
def relay_section(d: Json) -> tuple[list[str], list[tuple[str, str, str]]]:
    rows = d["results"]
    out = [
        "## 5. Relay",
        "",
        f"{d['organizations']} billed organizations per scenario, each report adding one "
        "series; latency = emulator arrival of the first event carrying at least the count "
        "after the report − the client's commit. `limit` = the worker's `--rate-limit` / the "
        "emulator's token bucket (Stripe test mode: 25 requests/s).",
        "",
        "| scenario | debounce | limit (worker/Stripe) | offered/s | achieved/s | p50 | p99 | "
        "max | events/report | Stripe req/s | 429s | all delivered |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lat = r["latency_seconds"]
        limit = f"{r['worker_rate_limit']:g}/{r['emulator_rate_limit'] or 'off'}"
        out.append(
            f"| {r['name']} | {r['debounce']:g} s | {limit} | {r['rate']:g} | "
            f"{r['achieved_rate']:.0f} | {ms(lat['p50'])} | {ms(lat['p99'])} | "
            f"{ms(lat['max'])} | {r['meter_events_per_report']:.2f} | "
            f"{r['stripe_requests_per_second']:.1f} | {r['answered_429']} | "
            f"{'yes' if r['all_delivered'] else 'NO'} |"
        )
    fig, ax = plt.subplots(figsize=SIZE)
    for name in dict.fromkeys(r["name"] for r in rows):
        sel = [r for r in rows if r["name"] == name]
        xs = [r["achieved_rate"] for r in sel]
        (line,) = ax.plot(xs, [r["latency_seconds"]["p50"] for r in sel], "o-", label=name)
        ax.plot(xs, [r["latency_seconds"]["p99"] for r in sel], "x--", color=line.get_color())
    ax.axhline(0.1, color="grey", lw=0.8, ls="--")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("reports/s (achieved)")
    ax.set_ylabel("latency, s (o p50, x p99)")
    ax.legend(fontsize=6)
    img = save(fig, "relay")
    out += ["", f"![relay]({img})", ""]

    def find(name: str, rate: float) -> Json | None:
        return next((r for r in rows if r["name"] == name and r["rate"] == rate), None)

    targets = []
    r = find("defaults", 10)
    if r:
        lat = r["latency_seconds"]
        others = [
            f"debounce {o['debounce']:g} s: p50 {ms(o['latency_seconds']['p50'])}"
            for o in (find("debounce_0.2", 10), find("debounce_0", 10))
            if o
        ]
        targets.append(
            (
                "Relay p50 ≤ 100 ms, p99 ≤ 1 s below the limit (the worker's defaults, "
                "10 reports/s)",
                f"p50 {ms(lat['p50'])}, p99 {ms(lat['p99'])}"
                + (f" (context, {'; '.join(others)})" if others else ""),
                status(lat["p50"] <= 0.1 and lat["p99"] <= 1.0),
            )
        )
    return out, targets


def relay_burst_section(d: Json) -> tuple[list[str], list[tuple[str, str, str]]]:
    bursts = d["bursts"]

    def burst_size(b: Json) -> int:
        return int(b.get("organizations", d["organizations"]))

    out = [
        "## 6. Relay at scale: a burst, and rollover",
        "",
        f"{d['organizations']} billed organizations (the targets' burst; one context row "
        "has more) change in one transaction; the time from its commit until `relay_status` "
        "shows every one's count posted (Stripe answered and the ledger holds the count: "
        "`in_sync` or `confirming`; read once the organizations' outbox rows are gone, which "
        "is polled every 20 ms: the view costs tens of milliseconds at hundreds of "
        "organizations, too much CPU to poll it in a tight loop beside the worker; "
        "`confirmed`: the median time until the meter's event summary, read "
        "`--confirm-after` (5 s) after the post, confirmed "
        "every one, context), one worker with its default debounce "
        "(50 ms), no rate limit anywhere, median of the repeats (rows alternate within each "
        "repeat). `delay` is the time the emulator takes per meter-event request (0: the "
        "worker's own cost; 50 ms: a network round trip to Stripe). `--concurrency 1` posts "
        "one organization at a time, as the worker did before.",
        "",
        "| API | concurrency | delay | organizations | organizations/s (median) | runs "
        "| Stripe requests | confirmed |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for b in bursts:
        runs = ", ".join(f"{r['organizations_per_second']:.0f}" for r in b["runs"])
        confirmed = [r["confirmed_seconds"] for r in b["runs"] if "confirmed_seconds" in r]
        shown = f"{statistics.median(confirmed):.1f} s" if confirmed else "–"
        out.append(
            f"| {b['api']} | {b['concurrency']} | {b['delay_ms']} ms | {burst_size(b):,} | "
            f"{b['median_per_second']:.0f} | {runs} | {b['runs'][-1]['stripe_requests']} "
            f"| {shown} |"
        )
    out += [
        "",
        "Rollover: organizations on 4 s periods (grace 60 s) change right after their period "
        "ended; the delay from that commit until Stripe holds the new period's value.",
        "",
        "| API | organizations | p50 | p99 | max | grace |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in d["rollover"]:
        f = r["first_post_delay_seconds"]
        out.append(
            f"| {r['api']} | {r['organizations']} | {ms(f['p50'])} | {ms(f['p99'])} | "
            f"{ms(f['max'])} | {r['grace_seconds']} s |"
        )
    out.append("")

    def best(api: str, delay: int, size: int = d["organizations"]) -> Json | None:
        rows = [
            b
            for b in bursts
            if b["api"] == api and b["delay_ms"] == delay and burst_size(b) == size
        ]
        return max(rows, key=lambda b: b["median_per_second"], default=None)

    def single(delay: int) -> Json | None:
        return next(
            (
                b
                for b in bursts
                if b["api"] == "v1" and b["concurrency"] == 1 and b["delay_ms"] == delay
            ),
            None,
        )

    targets = []
    v1, one = best("v1", 0), single(0)
    if v1:
        base = f" (one at a time: {one['median_per_second']:.0f}/s)" if one else ""
        targets.append(
            (
                "Relay burst, v1, no rate limit: ≥ 500 organizations/s",
                f"{v1['median_per_second']:.0f}/s at concurrency {v1['concurrency']}{base}",
                status(v1["median_per_second"] >= 500),
            )
        )
    v2 = best("v2-stream", 0)
    if v2:
        larger = [
            b
            for b in bursts
            if b["api"] == "v2-stream" and b["delay_ms"] == 0 and burst_size(b) > burst_size(v2)
        ]
        context = "".join(
            f"; context, a burst of {burst_size(b):,}: {b['median_per_second']:.0f} events/s"
            for b in larger
        )
        targets.append(
            (
                f"Relay burst, v2 streams: ≥ 5,000 events/s ({burst_size(v2)} organizations)",
                f"{v2['median_per_second']:.0f} events/s{context}",
                status(v2["median_per_second"] >= 5000),
            )
        )
    lat, lat_one = best("v1", 50), single(50)
    if lat and lat_one:
        targets.append(
            (
                "Relay burst with a 50 ms round trip: calls at once keep up (context)",
                f"{lat['median_per_second']:.0f}/s at concurrency {lat['concurrency']} vs "
                f"{lat_one['median_per_second']:.0f}/s one at a time",
                status(lat["median_per_second"] > 4 * lat_one["median_per_second"]),
            )
        )
    for r in d["rollover"]:
        f = r["first_post_delay_seconds"]
        targets.append(
            (
                f"Rollover ({r['api']}): the new period's first post right after its first "
                "change (debounce + one claim), not after the old period's grace",
                f"p99 {ms(f['p99'])}, max {ms(f['max'])} (grace {r['grace_seconds']} s)",
                status(f["max"] < 1.0),
            )
        )
    return out, targets


# ----------------------------------------------------------------------------- growth
def growth_plot(reads: Json | None, backfill: Json | None, ingest: Json | None) -> str | None:
    if not (reads or backfill):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(SIZE[0] * 1.3, SIZE[1]))
    ax = axes[0]
    if reads:
        rows = [r for r in reads["results"] if r.get("layout", "disjoint") == "disjoint"]
        xs = [r["series"] for r in rows]
        for key in ("period_usage", "count_active", "period_series", "from_scratch"):
            ax.plot(xs, [r["median_seconds"][key] for r in rows], "o-", label=key)
    if backfill:
        rows = backfill["results"]
        ax.plot(
            [r["metrics"] for r in rows],
            [r["backfill_seconds"] for r in rows],
            "s--",
            label="backfill (x = metrics)",
        )
        new = backfill.get("new_series") or []
        if new:
            ax.plot(
                [r["series"] for r in new],
                [r["backfill_seconds"] for r in new],
                "s:",
                label="backfill, all-new series",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("series (reads) / metrics (backfill)")
    ax.set_ylabel("seconds")
    ax.set_title("cost vs data size")
    ax.legend(fontsize=6)
    ax = axes[1]
    if ingest:
        for method in sorted({r["method"] for r in ingest["results"]}):
            sel = [r for r in ingest["results"] if r["method"] == method and r["clients"] == 1]
            xs = [r["metrics_per_report"] for r in sel]
            off = [1e3 / r["median_tps"]["off"] for r in sel]
            on = [1e3 / r["median_tps"]["on"] for r in sel]
            (line,) = ax.plot(xs, on, "o-", label=f"{method}, tracking on")
            ax.plot(xs, off, "x--", color=line.get_color(), label=f"{method}, tracking off")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("metrics per report")
        ax.set_ylabel("ms per report (1 client)")
        ax.set_title("ingest cost vs report size")
        ax.legend(fontsize=6)
    return save(fig, "growth")


# result file -> the `make bench` part (BENCH_ONLY) that writes it
def attached_section(d: Json) -> tuple[list[str], list[tuple[str, str, str]]]:
    """The shape matrix on an application's own schema beside the reference model."""
    out = [
        "## 7. An application's own schema, attached, beside the reference model",
        "",
        "The same shapes and scenarios on two databases of one server: the reference model, "
        "and schema `app` of `active_series.devtools.app_schema` (its own table and column "
        f"names, integer keys on some tables, attached). {d['results'][0]['clients']} clients; "
        "in every repeat the two alternate, tracking off then on in each; medians of "
        f"{d['results'][0]['repeats']} repeats. `off/on` is each schema's throughput with "
        "tracking relative to itself without it; `spread` is the range of the repeats' own "
        "off/on ratios, both schemas together: a difference inside it is noise. `+ms` is "
        "tracking's time per report (on − off); `app÷ref off` compares the schemas without "
        "tracking (the reference model has more indexes and foreign keys).",
        "",
        "| shape | scenario | ref off/on | app off/on | difference | spread | ref +ms "
        "| app +ms | app÷ref off |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    within = 0
    for r in d["results"]:
        runs = r["runs"]
        paired = [
            off / on
            for side in ("ref", "app")
            for off, on in zip(runs[f"{side} off"], runs[f"{side} on"], strict=True)
        ]
        spread = max(paired) - min(paired)
        diff = r["app_off_over_on"] - r["ref_off_over_on"]
        within += abs(diff) <= spread
        out.append(
            f"| {shape_label(r['shape'])} | {r['scenario']} | {r['ref_off_over_on']:.2f} "
            f"| {r['app_off_over_on']:.2f} | {diff:+.2f} | {spread:.2f} "
            f"| {r['ref_added_ms']:.3f} | {r['app_added_ms']:.3f} | {r['app_over_ref_off']:.2f} |"
        )
    total = len(d["results"])
    out.append("")
    target = [
        (
            "the shape matrix on an attached, foreign-named schema is within noise of the "
            "reference model's",
            f"{within} of {total} cells within the repeats' spread",
            status(within == total),
        )
    ]
    return out, target


PARTS = {"shapes": "ingest", "ingest": "ingest-sizes", "relay_burst": "relay-burst"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    data = {
        n: load(n)
        for n in ("shapes", "ingest", "reads", "backfill", "relay", "relay_burst", "attached")
    }
    sections: list[str] = []
    targets: list[tuple[str, str, str]] = []
    builders = {
        "shapes": lambda d: shapes_section(d, load("shapes-before")),
        "ingest": ingest_section,
        "reads": reads_section,
        "backfill": backfill_section,
        "relay": relay_section,
        "relay_burst": relay_burst_section,
        "attached": attached_section,
    }
    for name, build in builders.items():
        d = data[name]
        part = PARTS.get(name, name)
        if d is None:
            if name != "ingest":  # the by-size table is optional
                sections += [
                    f"## {part}",
                    "",
                    f"(no result file: not run: `make bench BENCH_ONLY={part}`)",
                    "",
                ]
            continue
        text, t = build(d)
        if name == "ingest":
            shape = {
                (r.get("repeats", d["repeats"]), r.get("seconds_per_run", d["seconds_per_run"]))
                for r in d["results"]
            }
            if len(shape) > 1:
                most, seconds = max(shape)
                sizes = sorted(
                    {
                        r["metrics_per_report"]
                        for r in d["results"]
                        if (r.get("repeats"), r.get("seconds_per_run")) == (most, seconds)
                    }
                )
                text.append(
                    f"The rows with {most}×{seconds} s runs were re-measured after the full run: "
                    f"`make bench BENCH_ONLY=ingest-sizes BENCH_INGEST_SIZES_ARGS='--metrics "
                    f"{' '.join(map(str, sizes))} --repeats {most} --seconds {seconds} --merge'`."
                )
                text.append("")
        extra = ""
        if name == "backfill" and max(r["metrics"] for r in d["results"]) > 5 * 10**6:
            extra = " BENCH_BACKFILL_SCALE=7"
        sections += text + [
            f"Reproduce: `make bench BENCH_ONLY={part}{extra}` "
            f"(result: `bench/results/{name}.json`, run finished {d['finished_at']}, "
            f"commit {d.get('commit')}).",
            "",
        ]
        targets += t
    growth = growth_plot(data["reads"], data["backfill"], data["ingest"])
    any_d = next((d for d in data.values() if d), None)
    host = any_d["host"] if any_d else {}
    # the server the other parts share (the shape matrix runs on its own, both settings)
    other = next((d for n, d in data.items() if d and n != "shapes"), any_d)
    server = other["server"] if other else {}
    head = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`bench/report.py` from `bench/results/*.json`; do not edit "
        "by hand). The numbers come from one run on a shared "
        f"{host.get('cpus', '?')}-core machine (load average at start "
        f"{', '.join(f'{x:.1f}' for x in host.get('loadavg_at_start') or [])}), PostgreSQL "
        f"{server.get('server_version', '?')} in a throwaway cluster with fsync="
        f"{server.get('fsync', '?')}, synchronous_commit={server.get('synchronous_commit', '?')}"
        f", shared_buffers={server.get('shared_buffers', '?')} (the shape matrix: its own "
        "throwaway server, every cell in production and CPU-only settings, see section 1). "
        "Every figure that judges a "
        "target is a ratio or a comparison measured side by side in the same run (alternating, "
        "median of repeats); absolute times are context only. See docs/SCALING.md for what the "
        "curves mean for growth.",
        "",
        "## Targets",
        "",
        "| target | measured | status |",
        "|---|---|---|",
        *[f"| {t} | {m} | {s} |" for t, m, s in targets],
        "",
        "Run everything: `make bench` (≈ 22 min; `BENCH_SCALE=5` stops the reads at 10^5 series, "
        "`BENCH_BACKFILL_SCALE=7` adds 10^7 metrics to the backfill). One part: "
        "`make bench BENCH_ONLY=ingest` (the shape matrix in both settings, ≈ 12 min; "
        "`BENCH_INGEST_ARGS=--quick` for one short repeat, ≈ 3 min), or reads, backfill, relay, "
        "relay-burst, attached, "
        "ingest-sizes (the older by-size table, INSERT and COPY, not in the default run); the "
        "report is rebuilt from the result files present. One cell's profile (tracking on, "
        "`track_functions = all`; add `--settings production` or `cpu-only` to switch): "
        "`bench/shapes.py --server --profile 200x3 first`. Backend instructions per report, off, "
        "on and the seed, for builds side by side (valgrind; steadier than any wall-clock "
        "ratio on this machine): `bench/instructions.py a=old.sql b=new.sql`.",
        "",
    ]
    if growth:
        head += ["## Growth", "", f"![growth]({growth})", ""]
    args.out.write_text("\n".join(head + sections).rstrip() + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
