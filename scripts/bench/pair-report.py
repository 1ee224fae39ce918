#!/usr/bin/env python3
"""pair-report.py RUNDIR [--doc FILE]: the table of scripts/bench/nbd-matrix.sh
or scripts/bench/qcow2-matrix.sh.

Medians over the rounds of each (target, workload): IOPS, MiB/s, mean
completion latency; one ratio column per other target (the first target over
it).  What the targets and workloads are, and which result markers of FILE the
table replaces with --doc, comes from the run's meta.env (targets=, workloads=,
markers=, and ratios=a/b|c/b when the ratio columns are not the first target
over each other); runs made before those lines existed are nbd runs.
"""
import json
import os
import statistics
import sys

NBD = {
    "targets": "aot:ublk-aot nbd|nbd:kernel nbd",
    "workloads": "rr4k-qd1:4k random read, QD1|rr4k-qd64:4k random read, QD64|rw4k-qd64:4k random write, QD64|"
                 "sr128k-qd16:128k sequential read, QD16|sw128k-qd16:128k sequential write, QD16|"
                 "rr4k-qd128-2q:4k random read, 2 jobs x QD64, 2 queues / 2 connections",
    "markers": "nbd-results",
}


def pairs(text):
    """'k:label|k2:label2' -> [(k, label), ...]"""
    return [tuple(p.split(":", 1)) for p in text.split("|") if p]


def load(run):
    """{(target, workload): [(iops, MiB/s, mean clat us), ...]}"""
    out = {}
    d = os.path.join(run, "runs")
    for f in sorted(os.listdir(d)):
        if not f.endswith(".json"):
            continue
        target = f.split(".")[0]
        text = open(os.path.join(d, f)).read()
        doc = json.loads(text[text.index("{"):])   # fio may print notes first
        for job in doc["jobs"]:
            side = job["read"] if job["read"]["io_bytes"] else job["write"]
            out.setdefault((target, job["jobname"]), []).append(
                (side["iops"], side["bw_bytes"] / 2**20, side["clat_ns"]["mean"] / 1000))
    return out


def meta(run):
    m = {}
    try:
        for line in open(os.path.join(run, "meta.env")):
            k, _, v = line.rstrip("\n").partition("=")
            m[k] = v
    except OSError:
        pass
    for k, v in NBD.items():
        m.setdefault(k, v)
    return m


def table(run):
    data, m = load(run), meta(run)
    targets, workloads = pairs(m["targets"]), pairs(m["workloads"])
    med = {k: tuple(statistics.median(s[i] for s in v) for i in range(3)) for k, v in data.items()}
    names = dict(targets)
    index = {t: i for i, (t, _) in enumerate(targets)}
    if "ratios" in m:
        ratios = [tuple(p.split("/")) for p in m["ratios"].split("|") if p]
        ratio_head = [f"{names[a]} vs {names[b]}" for a, b in ratios]
    else:
        ratios = [(targets[0][0], t) for t, _ in targets[1:]]
        ratio_head = [f"vs {names[b]}" for _, b in ratios]
    head = ["workload"] + [f"{label} IOPS" for _, label in targets] + ratio_head \
        + [f"{label} MiB/s" for _, label in targets] + [f"{label} mean lat (us)" for _, label in targets] + ["rounds"]
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for w, label in workloads:
        got = [med.get((t, w)) for t, _ in targets]
        cells = [label] + [f"{g[0]:,.0f}" if g else "-" for g in got]
        for a, b in ratios:
            x, y = got[index[a]], got[index[b]]
            cells.append(f"**{x[0] / y[0]:.2f}x**" if x and y and y[0] else "(missing)")
        cells += [f"{g[1]:,.1f}" if g else "-" for g in got] + [f"{g[2]:,.0f}" if g else "-" for g in got]
        cells.append(str(min((len(data.get((t, w), [])) for t, _ in targets), default=0)))
        rows.append("| " + " | ".join(cells) + " |")
    lines = [f"Run `{os.path.basename(os.path.normpath(run))}`: kernel {m.get('kernel', '?')}, "
             f"{m.get('vm', m.get('cpus', '?') + ' CPUs')}; {m.get('export', '?')}; "
             + "; ".join(m[k] for k in ("fio", "nbdkit", "qemu", "nbd_client", "ublk_aot") if k in m)
             + f"; rounds {m.get('rounds', '?')}; medians.", ""]
    if "note" in m:
        lines[0] += " " + m["note"]
    return "\n".join(lines + rows) + "\n"


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: pair-report.py RUNDIR [--doc FILE]")
    run = sys.argv[1]
    text = table(run)
    if len(sys.argv) == 4 and sys.argv[2] == "--doc":
        doc, name = sys.argv[3], meta(run)["markers"]
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        old = open(doc).read()
        i, j = old.find(begin), old.find(end)
        if i < 0 or j < i:
            sys.exit(f"pair-report.py: {doc} has no '{begin}' ... '{end}' markers")
        open(doc, "w").write(old[:i + len(begin)] + "\n" + text.rstrip("\n") + "\n" + old[j:])
    else:
        sys.stdout.write(text)


main()
