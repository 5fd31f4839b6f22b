"""Prints scripts/bench's table from the figures the bench scripts appended
to a BENCH_SUMMARY file (format: scripts/lib/summary.sh).

    python3 scripts/lib/bench_table.py SUMMARY_FILE
"""

import statistics
import sys

# The table's order: the list, not the order the scripts run in.
ORDER = [
    "rpc_c1_calls", "rpc_c1_p50", "rpc_c1_p99",
    "rpc_c64_calls", "rpc_c64_p50", "rpc_c64_p99",
    "capacity", "stall_p999", "http_wired", "http_hello",
    "crash_leave", "graceful_leave", "list_cli", "list_lib",
    "idle_rss", "idle_etcd", "workers",
]
UNITS = {"us": "µs"}


def number(x):
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def values(field):
    return [float(v) for v in field.split(",") if v not in ("", "-")]


def spread(xs):
    if not xs:
        return "(none)"
    if len(xs) == 1:
        return number(xs[0])
    return " / ".join(number(x) for x in (min(xs), statistics.median(xs), max(xs)))


def goal_cell(goal, median, ratio, unit):
    if goal == "-":
        return "-"
    spec, _, note = goal.partition(";")
    for op, sign in ((">=", "≥"), ("<=", "≤")):
        if op in spec:
            kind, bound = spec.split(op)
            bound = float(bound)
            measured = ratio if kind == "ratio" else median
            if measured is None:
                met = "?"
            else:
                met = "met" if (measured >= bound if op == ">=" else measured <= bound) else "**not met**"
            shown = f"{sign} {bound:,g}" + ("×" if kind == "ratio" else f" {UNITS.get(unit, unit)}")
            cell = f"{shown}: {met}"
            return f"{cell} ({note})" if note else cell
    return goal


def main():
    rows = {}
    with open(sys.argv[1], encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 7:
                print(f"bench: ignoring a malformed summary line: {line!r}", file=sys.stderr)
                continue
            rows[fields[0]] = fields[1:]
    ids = [i for i in ORDER if i in rows] + [i for i in rows if i not in ORDER]
    print("| measure | svckit (min / median / max) | baseline (median) | ratio | goal |")
    print("|---|---|---|---|---|")
    for i in ids:
        measure, unit, kit, base_name, base, goal = rows[i]
        kit, base = values(kit), values(base)
        median = statistics.median(kit) if kit else None
        base_median = statistics.median(base) if base else None
        ratio = median / base_median if median is not None and base_median else None
        base_cell = f"{base_name}: {number(base_median)}" if base_median is not None else "-"
        ratio_cell = f"{ratio:.2f}" if ratio is not None else "-"
        print(f"| {measure} ({UNITS.get(unit, unit)}) | {spread(kit)} | {base_cell} | {ratio_cell} "
              f"| {goal_cell(goal, median, ratio, unit)} |")


main()
