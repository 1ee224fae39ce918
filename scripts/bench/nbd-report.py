#!/usr/bin/env python3
"""nbd-report.py RUNDIR [--doc FILE]: the table of scripts/bench/nbd-matrix.sh.

Medians over the rounds of each (client, workload): IOPS, MiB/s, mean
completion latency; the ratio is ublk-aot over the kernel's nbd client.
With --doc, the table replaces what is between the nbd result markers of FILE.
"""
import json
import os
import statistics
import sys

BEGIN, END = "<!-- nbd-results:begin -->", "<!-- nbd-results:end -->"
ORDER = ["rr4k-qd1", "rr4k-qd64", "rw4k-qd64", "sr128k-qd16", "sw128k-qd16", "rr4k-qd128-2q"]
LABEL = {
    "rr4k-qd1": "4k random read, QD1",
    "rr4k-qd64": "4k random read, QD64",
    "rw4k-qd64": "4k random write, QD64",
    "sr128k-qd16": "128k sequential read, QD16",
    "sw128k-qd16": "128k sequential write, QD16",
    "rr4k-qd128-2q": "4k random read, 2 jobs x QD64, 2 queues / 2 connections",
}


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
    return m


def table(run):
    data, m = load(run), meta(run)
    med = {k: tuple(statistics.median(s[i] for s in v) for i in range(3)) for k, v in data.items()}
    rows = ["| workload | ublk-aot nbd IOPS | kernel nbd IOPS | ratio | ublk-aot MiB/s | kernel MiB/s "
            "| ublk-aot mean lat (us) | kernel mean lat (us) | rounds |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w in ORDER:
        a, n = med.get(("aot", w)), med.get(("nbd", w))
        if not a or not n:
            rows.append(f"| {LABEL[w]} | {'-' if not a else f'{a[0]:,.0f}'} | {'-' if not n else f'{n[0]:,.0f}'} "
                        "| (missing) | | | | | |")
            continue
        k = min(len(data[("aot", w)]), len(data[("nbd", w)]))
        rows.append(f"| {LABEL[w]} | {a[0]:,.0f} | {n[0]:,.0f} | **{a[0] / n[0]:.2f}x** | {a[1]:,.1f} | {n[1]:,.1f} "
                    f"| {a[2]:,.0f} | {n[2]:,.0f} | {k} |")
    head = [f"Run `{os.path.basename(os.path.normpath(run))}`: kernel {m.get('kernel', '?')}, "
            f"{m.get('vm', m.get('cpus', '?') + ' CPUs')}; {m.get('export', '?')}; "
            f"{m.get('fio', 'fio')}, {m.get('nbdkit', 'nbdkit')}, {m.get('nbd_client', 'nbd-client')}; "
            f"{m.get('ublk_aot', 'ublk-aot')}; rounds {m.get('rounds', '?')}; medians.", ""]
    return "\n".join(head + rows) + "\n"


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: nbd-report.py RUNDIR [--doc FILE]")
    text = table(sys.argv[1])
    if len(sys.argv) == 4 and sys.argv[2] == "--doc":
        doc = sys.argv[3]
        old = open(doc).read()
        i, j = old.find(BEGIN), old.find(END)
        if i < 0 or j < i:
            sys.exit(f"nbd-report.py: {doc} has no '{BEGIN}' ... '{END}' markers")
        open(doc, "w").write(old[:i + len(BEGIN)] + "\n" + text.rstrip("\n") + "\n" + old[j:])
    else:
        sys.stdout.write(text)


main()
