#!/usr/bin/env python3
"""The tables of a proxy/benches/bench.sh run, in Markdown.

  report.py RUN_DIR         raw.tsv, rss.tsv, noise.txt and settings.tsv of a run -> the report
  report.py --oha-result    oha's JSON on stdin -> "requests seconds p50_us p99_us errors"

Values are the median over rounds with (min-max). A ratio against nginx is taken within each
round (both measured minutes apart at most), then summarised the same way: the machine drifts
between rounds, and a per-round ratio cancels most of that drift.
"""
import csv
import json
import os
import statistics
import sys

REFERENCE = "nginx"
# A fixed-rate run whose generator fell this far below the rate measured something else.
HELD_RATE = 0.97


def oha_result(report):
    """oha's JSON report -> (responses, seconds, p50 us, p99 us, failed requests)."""
    codes = report.get("statusCodeDistribution", {})
    responses = sum(codes.values())
    failed = sum(n for code, n in codes.items() if not code.startswith("2"))
    failed += sum(report.get("errorDistribution", {}).values())
    latency = report["latencyPercentiles"]
    us = lambda seconds: round((seconds or 0) * 1e6)
    return responses, report["summary"]["total"], us(latency["p50"]), us(latency["p99"]), failed


def parse_rows(lines):
    """raw.tsv lines -> dicts with numbers where the columns are numeric."""
    rows = list(csv.DictReader(lines, delimiter="\t"))
    for row in rows:
        for key, value in row.items():
            if key not in ("phase", "target"):
                row[key] = float(value)
    return rows


def runs(rows, phase, target):
    return [r for r in rows if r["phase"] == phase and r["target"] == target]


def rate(r):
    return r["requests"] / r["seconds"]


def cpu_us(r, ticks=("user_ticks", "system_ticks")):
    """CPU per request in µs from the proxy's clock ticks over the run."""
    return sum(r[t] for t in ticks) / r["hz"] * 1e6 / r["requests"]


def summary(values, digits):
    """median (min–max) of values, or '-'."""
    if not values:
        return "-"
    f = lambda v: f"{v:,.{digits}f}"
    return f"{f(statistics.median(values))} ({f(min(values))}–{f(max(values))})"


def per_round_ratios(rows, phase, target, measure):
    """measure(target) / measure(nginx), round by round."""
    mine = {r["round"]: measure(r) for r in runs(rows, phase, target)}
    ref = {r["round"]: measure(r) for r in runs(rows, phase, REFERENCE)}
    return [mine[k] / ref[k] for k in sorted(mine) if k in ref and ref[k]]


def targets(rows, phase):
    seen = []
    for r in rows:
        if r["phase"] == phase and r["target"] not in seen:
            seen.append(r["target"])
    return seen


def labels(mode, routes):
    """Target -> how the tables name it: gatehouse in bold, with its route count when not 1."""
    many = f"**gatehouse**, {routes:,} routes"
    return {"gatehouse": many if mode == "default" and routes > 1 else "**gatehouse**", "gatehouse-routes": many}


def closed_table(rows, rss_mib, names):
    out = ["| target | req/s | req/s ×nginx | CPU µs/req | CPU ×nginx | user µs/req | system µs/req "
           "| peak RSS MiB | other CPU % | errors |", "|---|---|---|---|---|---|---|---|---|---|"]
    for t in targets(rows, "closed"):
        mine = runs(rows, "closed", t)
        proxy = t != "direct"
        out.append("| " + " | ".join([
            names.get(t, t),
            summary([rate(r) for r in mine], 0),
            summary(per_round_ratios(rows, "closed", t, rate), 2),
            summary([cpu_us(r) for r in mine], 1) if proxy else "-",
            summary(per_round_ratios(rows, "closed", t, cpu_us), 2) if proxy else "-",
            summary([cpu_us(r, ("user_ticks",)) for r in mine], 1) if proxy else "-",
            summary([cpu_us(r, ("system_ticks",)) for r in mine], 1) if proxy else "-",
            f"{rss_mib[t]:.1f}" if t in rss_mib else "-",
            summary([100 * r["other"] for r in mine], 0),
            str(int(sum(r["errors"] for r in mine))),
        ]) + " |")
    return out


def fixed_table(rows, fixed_rate, names):
    out = ["| target | achieved req/s | p50 ms | p99 ms | p99 ×nginx | CPU µs/req | CPU ×nginx "
           "| load core busy % | other CPU % | errors |", "|---|---|---|---|---|---|---|---|---|---|"]
    short = []
    for t in targets(rows, "fixed"):
        mine = runs(rows, "fixed", t)
        proxy = t != "direct"
        p99 = lambda r: r["p99_us"]
        short += [f"{names.get(t, t)} round {int(r['round'])} ({rate(r):,.0f} req/s)" for r in mine
                  if rate(r) < HELD_RATE * fixed_rate]
        out.append("| " + " | ".join([
            names.get(t, t),
            summary([rate(r) for r in mine], 0),
            summary([r["p50_us"] / 1000 for r in mine], 3),
            summary([r["p99_us"] / 1000 for r in mine], 3),
            summary(per_round_ratios(rows, "fixed", t, p99), 2) if proxy else "-",
            summary([cpu_us(r) for r in mine], 1) if proxy else "-",
            summary(per_round_ratios(rows, "fixed", t, cpu_us), 2) if proxy else "-",
            summary([100 * r["load_busy"] for r in mine], 0),
            summary([100 * r["other"] for r in mine], 0),
            str(int(sum(r["errors"] for r in mine))),
        ]) + " |")
    out.append("")
    out.append(f"Runs where the generator fell below {HELD_RATE:.0%} of {fixed_rate:,} req/s: "
               + ("; ".join(short) if short else "none") + ".")
    return out


def report(rows, rss_mib, settings, noise, header_work):
    s = settings
    known = lambda k: s.get(k, "?")
    knobs = dict(kv.split("=", 1) for kv in known("settings").split())
    rounds, duration, conns = knobs.get("ROUNDS", "?"), knobs.get("DURATION", "?"), knobs.get("CONNS", "?")
    fixed_rate = int(knobs.get("FIXED_RATE", "0"))
    out = [f"Run {known('date')}, gatehouse {known('gatehouse')}; {known('settings')}",
           f"({known('tools')}; {known('machine')}; {known('pinning')}).", "",
           f"Closed loop: wrk, 1 thread, {conns} connections, {duration} s a run, {rounds} round(s). "
           "Median (min–max) over rounds; ×nginx is the median (min–max) of per-round ratios.", ""]
    names = labels(known("mode"), int(knobs.get("ROUTES", "1")))
    out += closed_table(rows, rss_mib, names)
    if targets(rows, "fixed"):
        out += ["", f"Fixed rate: oha at {fixed_rate:,} req/s over {conns} connections, {duration} s a run, "
                f"{rounds} round(s); latency from when each request was due (coordinated omission corrected).", ""]
        out += fixed_table(rows, fixed_rate, names)
    out += ["", "Other CPU %: what other processes on the machine used during the run, in % of one core "
            "(the machine's CPU time minus the proxy's, the backend's and the load generator's; "
            "`direct` leaves the proxy core idle for them).", "",
            "Machine noise, per round (steal: /proc/stat; other processes as above, the highest run named):", ""]
    out += [f"- {line}" for line in noise]
    if header_work:
        out += ["", "What each proxy forwarded to the backend for `GET /bench/headers` (checked before measuring):", ""]
        out += [f"- {line}" for line in header_work]
    return "\n".join(out)


def read_run(run):
    with open(os.path.join(run, "raw.tsv")) as f:
        rows = parse_rows(f)
    rss_mib = {}
    with open(os.path.join(run, "rss.tsv")) as f:
        for line in f:
            name, kib = line.split()
            rss_mib[name] = int(kib) / 1024
    with open(os.path.join(run, "settings.tsv")) as f:
        settings = dict(line.rstrip("\n").split("\t", 1) for line in f if "\t" in line)
    lines = {}
    for name in ("noise.txt", "header-work.txt"):
        with open(os.path.join(run, name)) as f:
            lines[name] = [line.strip() for line in f if line.strip()]
    return rows, rss_mib, settings, lines["noise.txt"], lines["header-work.txt"]


def main(argv):
    if argv[1:] == ["--oha-result"]:
        try:
            print(*oha_result(json.load(sys.stdin)))
        except (ValueError, KeyError, TypeError) as e:
            sys.exit(f"report.py: oha's output is not the JSON report it should be ({e})")
        return
    if len(argv) != 2:
        sys.exit(__doc__)
    try:
        run = read_run(argv[1])
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"report.py: {argv[1]} is not a finished bench.sh run ({e})")
    print(report(*run))


if __name__ == "__main__":
    main(sys.argv)
