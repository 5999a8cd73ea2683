#!/usr/bin/env python3
"""Report of the paper experiment: tables, acceptance checks and two plots.

    python3 benches/paper/report.py RESULTS/paper.jsonl [MORE/paper.jsonl ...] \
        [--env RESULTS/paper-env.txt ...] [--md docs/results/paper.md] [--plots-dir docs/results]
        [--no-plots] [--notes NOTES.md]

Reads the JSON lines that benches/paper/run.sh appends (one per (mode, N, system) run; repeats
of a run are averaged in the tables, and htex/bare is the mean of the per-repeat ratios, each
repeat's two systems having run back to back) and the environment files
(default: paper-env.txt beside each results file). Writes the Markdown report and, with
matplotlib, paper-throughput.png (in the manner of the paper's Fig. 4: time for all completions
and throughput vs instances) and paper-latency.png (Fig. 5: per-completion latency vs
instances), both modes, htex and bare. Exit status 0 when every acceptance check passed, 1 when
one failed or could not be made.
"""

import argparse
import json
import os
import sys

MODES = ["timeshare", "mps"]
SYSTEMS = ["htex", "bare"]
MODE_NAME = {"timeshare": "time-sharing", "mps": "MPS"}
WITHIN = 0.05  # htex total time within 5 % of bare
MPS_GAIN = 2.5  # MPS N=4 throughput at least 2.5x N=1


def load(paths):
    """{(mode, n, system): record} (repeats merged, see merge()), every record, and bad lines."""
    groups, every, bad = {}, [], []
    for path in paths:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    r = json.loads(line)
                except ValueError:
                    bad.append("%s:%d" % (path, number))
                    continue
                mode, n, system = r.get("mode"), r.get("slots"), r.get("system")
                if not (mode and n and system):  # an early failure: the label still says which
                    parts = str(r.get("label", "")).split("-")
                    if len(parts) == 3 and parts[2].isdigit():
                        system, mode, n = parts[0], parts[1], int(parts[2])
                if not (mode and n and system):
                    bad.append("%s:%d (no mode/slots/system)" % (path, number))
                    continue
                r["mode"], r["slots"], r["system"] = mode, int(n), system
                every.append(r)
                groups.setdefault((mode, int(n), system), []).append(r)
    return {key: merge(rs) for key, rs in groups.items()}, every, bad


def merge(rs):
    """One record for the runs of one (mode, N, system): the last one when none succeeded, else
    the mean over the successful ones with as many completions as the last run (times, throughput,
    latency statistics; cold start: mean of means, max of maxima), with `_runs` (all), `_good`,
    `_totals` (each merged run's total_s) and `_dropped` (good runs of another completion count)."""
    target = next((r.get("completions") for r in reversed(rs) if not failed(r)), rs[-1].get("completions"))
    dropped = [r for r in rs if r.get("completions") != target and not failed(r)]
    good = [r for r in rs if not failed(r) and r.get("completions") == target]
    if len(good) <= 1:
        out = dict(good[-1] if good else rs[-1])
    else:
        out = dict(good[-1])
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        out["total_s"] = mean([r["total_s"] for r in good])
        out["throughput"] = mean([r["throughput"] for r in good])
        for key in ("latency_s", "service_s", "exec_s"):
            parts = [r[key] for r in good if isinstance(r.get(key), dict)]
            if parts:
                out[key] = {f: mean([p[f] for p in parts if p.get(f) is not None])
                            for f in ("mean", "p50", "p95", "max") if any(p.get(f) is not None for p in parts)}
        colds = [r["cold_start_s"] for r in good if isinstance(r.get("cold_start_s"), dict)]
        if colds:
            out["cold_start_s"] = {"mean": mean([c["mean"] for c in colds]), "max": max(c["max"] for c in colds)}
    out["_runs"] = len(rs)
    out["_good"] = len(good)
    out["_totals"] = [r["total_s"] for r in good]
    out["_dropped"] = len(dropped)
    return out


def failed(r):
    return bool(r.get("error")) or not r.get("ok") or bool(r.get("failures")) or not r.get("throughput")


def read_env(paths):
    """key: [values] from the `key: value` lines of the environment files (in order, deduplicated)."""
    facts = {}
    for path in paths:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            key, sep, value = line.partition(": ")
            if sep and key in ("date", "device", "driver", "packages", "cuda (nvidia-smi)", "python", "cpus", "htex", "git"):
                values = facts.setdefault(key, [])
                if value.strip() and value.strip() not in values:
                    values.append(value.strip())
    return facts


def fmt(x, digits=2):
    if x is None:
        return "-"
    if isinstance(x, (int, float)):
        return "%.*f" % (digits, x)
    return str(x)


def stat(r, key, field):
    v = r.get(key)
    return v.get(field) if isinstance(v, dict) else None


def speedup(runs, r):
    base = runs.get((r["mode"], 1, r["system"]))
    if base is None or failed(base) or failed(r):
        return None
    return r["throughput"] / base["throughput"]


def pairs(every, mode, n):
    """[(repeat, htex total_s, bare total_s)]: the repeats of (mode, n) in which both systems
    succeeded (the last record of each wins). run.sh runs the two systems of a repeat back to
    back on the same machine, so a pair shares the host's state; runs without a partner are left
    out of the comparison."""
    by_repeat = {}
    for r in every:
        if r["mode"] == mode and r["slots"] == n and not failed(r):
            by_repeat.setdefault(r.get("repeat", 1), {})[r["system"]] = r
    out = []
    for rep in sorted(by_repeat):
        h, b = by_repeat[rep].get("htex"), by_repeat[rep].get("bare")
        if h and b and b.get("total_s"):
            out.append((rep, h["total_s"], b["total_s"]))
    return out


def ratio(every, mode, n):
    """htex total time / bare total time for (mode, n): the mean over paired repeats, None when
    no repeat has both."""
    ps = pairs(every, mode, n)
    if not ps:
        return None
    return sum(h / b for _, h, b in ps) / len(ps)


def mps_gains(every, system):
    """[(repeat, MPS N=4 throughput / MPS N=1 throughput)] for the repeats that have both."""
    by_repeat = {}
    for r in every:
        if r["mode"] == "mps" and r["system"] == system and r["slots"] in (1, 4) and not failed(r):
            by_repeat.setdefault(r.get("repeat", 1), {})[r["slots"]] = r["throughput"]
    return [(rep, v[4] / v[1]) for rep, v in sorted(by_repeat.items()) if 1 in v and 4 in v]


def checks(runs, every, expect=(1, 2, 3, 4)):
    """[(name, passed, detail)]: the acceptance checks, for every mode and every expected N."""
    out = []
    ns = sorted({k[1] for k in runs} | set(expect))
    for mode in MODES:
        for n in ns:
            r = ratio(every, mode, n)
            name = "htex within %d%% of bare: %s N=%d" % (WITHIN * 100, MODE_NAME[mode], n)
            if r is None:
                missing = [s for s in SYSTEMS if (mode, n, s) not in runs or failed(runs[(mode, n, s)])]
                out.append((name, False, ("no successful run of " + ", ".join(missing)) if missing
                            else "no repeat with both systems"))
            else:
                ps = pairs(every, mode, n)
                out.append((name, abs(r - 1) <= WITHIN,
                            "htex/bare total time %.3f (%+.1f%%), mean of %d paired run(s): %s%s" % (
                                r, (r - 1) * 100, len(ps),
                                ", ".join("%.3f" % (h / b) for _, h, b in ps),
                                "; htex faster by more than 5%: check the runs" if r < 1 - WITHIN else "")))
    for system in SYSTEMS:
        name = "MPS N=4 throughput >= %.1fx N=1 (%s)" % (MPS_GAIN, system)
        gains = mps_gains(every, system)
        if not gains:
            out.append((name, False, "MPS N=1 and N=4 not both measured in one repeat"))
        else:
            g = sum(x for _, x in gains) / len(gains)
            out.append((name, g >= MPS_GAIN, "%.2fx, mean over %d repeat(s): %s" % (
                g, len(gains), ", ".join("%.2fx" % x for _, x in gains))))
    return out


def paper_comparison(runs):
    """The paper's other headline numbers, as measured here (information, not checks)."""
    lines = []
    for system in SYSTEMS:
        t1, m4, ts4 = runs.get(("timeshare", 1, system)), runs.get(("mps", 4, system)), runs.get(("timeshare", 4, system))
        if t1 and m4 and not failed(t1) and not failed(m4):
            lines.append("- %s: MPS N=4 throughput vs one instance without MPS (time-sharing N=1): %.2fx "
                         "(paper: 2.5x); time for all completions %.0f%% lower (paper: up to 60%%)."
                         % (system, m4["throughput"] / t1["throughput"], (1 - m4["total_s"] / t1["total_s"]) * 100))
        if ts4 and m4 and not failed(ts4) and not failed(m4) and stat(ts4, "service_s", "mean") and stat(m4, "service_s", "mean"):
            lines.append("- %s: mean per-completion latency at N=4, MPS vs time-sharing: %.0f%% lower (paper: 44%% lower)."
                         % (system, (1 - stat(m4, "service_s", "mean") / stat(ts4, "service_s", "mean")) * 100))
    return lines


def cold(r):
    c = r.get("cold_start_s")
    if isinstance(c, dict) and c.get("mean") is not None:
        return "%s / %s" % (fmt(c.get("mean"), 1), fmt(c.get("max"), 1))
    return "-"


def per_slot(r):
    p = r.get("per_slot")
    if not isinstance(p, dict):
        return "-"
    return " ".join(str(p[k]) for k in sorted(p, key=lambda k: (len(k), k)))


def markdown(runs, every, bad, env, sources, plots, expect, notes=None):
    L = []
    L.append("# Paper experiment: LLaMa-2-7B inference, 1-4 instances on one GPU, time-sharing vs MPS")
    L.append("")
    L.append("Reproduces §5.2 (Fig. 4 and 5) of *Fine-grained accelerator partitioning for Machine Learning "
             "and Scientific Computing in Function as a Service Platform* through htex (warm runners in "
             "whole-GPU time-shared slots or `--mps-split N` slots) and with bare Python processes, side by "
             "side. Each instance holds a LLaMa-2-7B-shaped model (random fp16 weights); one completion is 24 "
             "greedy tokens after a 40-token prompt; all completions are queued at once and taken by whichever "
             "instance is free. How it was run: benches/paper/README.md.")
    L.append("")
    if env:
        for key in ("device", "driver", "cuda (nvidia-smi)", "packages", "python", "cpus", "htex", "git", "date"):
            if env.get(key):
                L.append("- %s: %s" % (key, "; ".join(env[key])))
        L.append("")
    affinities = sorted({str(r.get("cpu_affinity", "none")).split("/")[0] for r in every if not failed(r)})
    per_instance = sorted({len(c["cpus"]) for r in every if not failed(r)
                           for c in (r.get("cold_starts") or []) if isinstance(c.get("cpus"), list)})
    if per_instance:
        affinities = [a + (" (CPUs per instance: %s)" % ", ".join(map(str, per_instance)) if a != "none" else "")
                      for a in affinities]
    steals = [r["cpu_steal_pct"] for r in every if isinstance(r.get("cpu_steal_pct"), (int, float))]
    L.append("CPU affinity of the instances (same in both systems): %s%s." % (
        "; ".join(affinities),
        "; CPU time stolen by the hypervisor during a run: %.2f-%.2f %%" % (min(steals), max(steals)) if steals else ""))
    L.append("")
    L.append("Results: %s (%d run record(s)%s)." % (", ".join(sources), len(every),
                                                    "; unreadable lines: " + ", ".join(bad) if bad else ""))
    L.append("")
    if notes:
        L.append(notes.rstrip())
        L.append("")
    L.append("## Runs")
    L.append("")
    L.append("total = first completion handed out/submitted → last answer; throughput = completions / total; "
             "speedup = throughput / throughput at N=1 (same mode and system). Per-completion times, mean / p95 "
             "in s: *service* = from the moment an instance takes the completion to the answer at the client "
             "(htex: slot start → result at the client; bare: hand-out → answer), the paper's Fig. 5 latency; "
             "*queue+service* = from the common submission to the answer; *exec* = generate() inside the "
             "process. Cold start = spawn → model built (mean / max over instances, s).")
    L.append("")
    L.append("| mode | N | system | runs | total s | completions/s | speedup | service mean / p95 | queue+service mean / p95 | exec mean | cold start | per instance | failures |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in MODES:
        for n in sorted({k[1] for k in runs if k[0] == mode}):
            for system in SYSTEMS:
                r = runs.get((mode, n, system))
                if r is None:
                    continue
                note = ""
                if r.get("error"):
                    note = " (error: %s)" % str(r["error"])[:160].replace("|", "/")
                sp = speedup(runs, r)
                runs_txt = "%d/%d" % (r["_good"], r["_runs"])
                if len(r["_totals"]) > 1:
                    runs_txt += " (%s-%s s)" % (fmt(min(r["_totals"]), 1), fmt(max(r["_totals"]), 1))
                if r["_dropped"]:
                    runs_txt += ", %d of other sizes left out" % r["_dropped"]
                L.append("| %s | %d | %s | %s | %s | %s | %s | %s / %s | %s / %s | %s | %s | %s | %s%s |" % (
                    MODE_NAME.get(mode, mode), n, system, runs_txt, fmt(r.get("total_s"), 1),
                    fmt(r.get("throughput"), 3), "-" if sp is None else "%.2fx" % sp,
                    fmt(stat(r, "service_s", "mean"), 3), fmt(stat(r, "service_s", "p95"), 3),
                    fmt(stat(r, "latency_s", "mean"), 1), fmt(stat(r, "latency_s", "p95"), 1),
                    fmt(stat(r, "exec_s", "mean"), 3), cold(r), per_slot(r),
                    r.get("failures", "-") if r["_good"] == 0 else 0, note))
    L.append("")
    L.append("## htex vs bare")
    L.append("")
    L.append("htex / bare compares the time for all completions, run by run: the two systems of one "
             "repeat ran back to back on the same machine, and the ratio is the mean of these paired "
             "ratios (runs without a partner are left out). Both systems run the same generate(), "
             "whose own time (exec) varies from run to run with the host; *overhead* = service - exec, "
             "per completion, is what each system adds around it (htex: worker, manager, interchange and "
             "client; bare: a pipe round trip).")
    L.append("")
    L.append("| mode | N | htex total s | bare total s | htex / bare | per pair | exec mean htex / bare | overhead ms htex / bare |")
    L.append("|---|---|---|---|---|---|---|---|")

    def overhead(r):
        s_, e_ = r and stat(r, "service_s", "mean"), r and stat(r, "exec_s", "mean")
        return None if s_ is None or e_ is None else (s_ - e_) * 1000

    for mode in MODES:
        for n in sorted({k[1] for k in runs if k[0] == mode}):
            h, b = runs.get((mode, n, "htex")), runs.get((mode, n, "bare"))
            r = ratio(every, mode, n)
            per_pair = ", ".join("%.3f" % (ph / pb) for _, ph, pb in pairs(every, mode, n)) or "-"
            L.append("| %s | %d | %s | %s | %s | %s | %s / %s | %s / %s |" % (
                MODE_NAME[mode], n, fmt(h and h.get("total_s"), 1), fmt(b and b.get("total_s"), 1),
                "-" if r is None else "%.3f" % r, per_pair, fmt(h and stat(h, "exec_s", "mean"), 3),
                fmt(b and stat(b, "exec_s", "mean"), 3), fmt(overhead(h), 1), fmt(overhead(b), 1)))
    L.append("")
    L.append("## Acceptance checks")
    L.append("")
    results = checks(runs, every, expect)
    for name, ok, detail in results:
        L.append("- **%s** %s: %s" % ("PASS" if ok else "FAIL", name, detail))
    if not results:
        L.append("- **FAIL** nothing was measured")
    L.append("")
    comp = paper_comparison(runs)
    if comp:
        L.append("## Against the paper's numbers")
        L.append("")
        L.extend(comp)
        L.append("")
    if plots:
        L.append("## Plots")
        L.append("")
        for title, name in plots:
            L.append("![%s](%s)" % (title, name))
            L.append("")
    all_ok = bool(results) and all(ok for _, ok, _ in results)
    L.append("**Overall: %s**" % ("PASS" if all_ok else "FAIL"))
    return "\n".join(L) + "\n", all_ok


STYLE = {
    ("timeshare", "htex"): dict(color="tab:blue", linestyle="-", marker="o"),
    ("timeshare", "bare"): dict(color="tab:blue", linestyle="--", marker="s", markerfacecolor="none"),
    ("mps", "htex"): dict(color="tab:orange", linestyle="-", marker="o"),
    ("mps", "bare"): dict(color="tab:orange", linestyle="--", marker="s", markerfacecolor="none"),
}


def series(runs, mode, system, value):
    xs, ys = [], []
    for n in sorted({k[1] for k in runs if k[0] == mode and k[2] == system}):
        r = runs[(mode, n, system)]
        v = value(r)
        if not failed(r) and v is not None:
            xs.append(n)
            ys.append(v)
    return xs, ys


def plots(runs, out_dir, device):
    """Writes the two PNGs; returns [(title, file name)] (empty without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib not installed; no plots", file=sys.stderr)
        return []
    os.makedirs(out_dir, exist_ok=True)
    ns = sorted({k[1] for k in runs}) or [1]
    completions = max((r.get("completions") or 0 for r in runs.values()), default=0)
    suffix = " (%s)" % device if device else ""
    made = []

    # Fig. 4: time for all completions (grouped bars, as the paper) and throughput (lines).
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    keys = [(m, s) for m in MODES for s in SYSTEMS]
    width = 0.8 / len(keys)
    top = 0.0
    for i, (mode, system) in enumerate(keys):
        xs, ys = series(runs, mode, system, lambda r: r.get("total_s"))
        top = max([top] + ys)
        st = STYLE[(mode, system)]
        ax1.bar([x - 0.4 + width * (i + 0.5) for x in xs], ys, width,
                label="%s, %s" % (MODE_NAME[mode], system), color=st["color"],
                alpha=1.0 if system == "htex" else 0.45, edgecolor="black", linewidth=0.5,
                hatch=None if system == "htex" else "//")
        xs, ys = series(runs, mode, system, lambda r: r.get("throughput"))
        ax2.plot(xs, ys, label="%s, %s" % (MODE_NAME[mode], system), **st)
    ax1.set_xlabel("instances on the GPU")
    ax1.set_ylabel("time for %d completions (s)" % completions)
    ax1.set_xticks(ns)
    ax1.set_title("Time to complete all requests")
    ax1.set_ylim(0, (top or 1) * 1.3)
    ax1.legend(fontsize=8, ncol=2, loc="upper right")
    ax1.grid(axis="y", alpha=0.3)
    ax2.set_xlabel("instances on the GPU")
    ax2.set_ylabel("throughput (completions/s)")
    ax2.set_xticks(ns)
    ax2.set_ylim(bottom=0)
    ax2.set_title("Throughput")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.suptitle("LLaMa-2-7B-shaped inference, time-sharing vs MPS, htex vs bare" + suffix, fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "paper-throughput.png"), dpi=120)
    plt.close(fig)
    made.append(("Time and throughput vs instances (Fig. 4)", "paper-throughput.png"))

    # Fig. 5: per-completion latency (service time), mean with a whisker up to p95.
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (mode, system) in enumerate(keys):
        xs, means = series(runs, mode, system, lambda r: stat(r, "service_s", "mean"))
        _, p95 = series(runs, mode, system, lambda r: stat(r, "service_s", "p95"))
        st = STYLE[(mode, system)]
        off = (i - (len(keys) - 1) / 2) * 0.06
        xo = [x + off for x in xs]
        if len(p95) == len(means):
            ax.errorbar(xo, means, yerr=[[0] * len(means), [p - m for p, m in zip(p95, means)]],
                        capsize=3, label="%s, %s" % (MODE_NAME[mode], system), **st)
        else:
            ax.plot(xo, means, label="%s, %s" % (MODE_NAME[mode], system), **st)
    ax.set_xlabel("instances on the GPU")
    ax.set_ylabel("latency per completion (s): mean, whisker to p95")
    ax.set_xticks(ns)
    ax.set_ylim(bottom=0)
    ax.set_title("Average inference latency" + suffix, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "paper-latency.png"), dpi=120)
    plt.close(fig)
    made.append(("Latency vs instances (Fig. 5)", "paper-latency.png"))
    return made


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="paper.jsonl files from run.sh")
    ap.add_argument("--env", action="append", default=None,
                    help="paper-env.txt files (default: the one beside each results file)")
    ap.add_argument("--md", default="docs/results/paper.md")
    ap.add_argument("--plots-dir", default=None, help="default: the Markdown file's directory")
    ap.add_argument("--no-plots", action="store_true", help="write no plots")
    ap.add_argument("--notes", help="a Markdown file whose text goes before the tables")
    ap.add_argument("--expect-slots", default="1,2,3,4",
                    help="instance counts every mode must have for the checks (default 1,2,3,4)")
    args = ap.parse_args()
    runs, every, bad = load(args.results)
    env_paths = args.env if args.env is not None else [
        os.path.join(os.path.dirname(os.path.abspath(p)), "paper-env.txt") for p in args.results]
    env = read_env(env_paths)
    md_dir = os.path.dirname(os.path.abspath(args.md))
    plot_dir = args.plots_dir or md_dir
    made = [] if args.no_plots else plots(runs, plot_dir, "; ".join(env.get("device", [])))
    rel = os.path.relpath(plot_dir, md_dir)
    made = [(t, n if rel == "." else os.path.join(rel, n)) for t, n in made]
    sources = [os.path.relpath(p) for p in args.results]
    expect = [int(x) for x in args.expect_slots.split(",") if x.strip()]
    notes = None
    if args.notes:
        with open(args.notes) as f:
            notes = f.read()
    text, ok = markdown(runs, every, bad, env, sources, made, expect, notes)
    os.makedirs(md_dir, exist_ok=True)
    with open(args.md, "w") as f:
        f.write(text)
    print(text, end="")
    print("report: wrote %s%s" % (args.md, "".join(" and " + os.path.join(plot_dir, os.path.basename(n)) for _, n in made)),
          file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
