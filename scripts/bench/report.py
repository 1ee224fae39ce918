#!/usr/bin/env python3
"""report.py RUNDIR — the Markdown results of one scripts/bench/matrix.sh run.

Reads RUNDIR/meta.env, RUNDIR/runs/*.json (fio), RUNDIR/runs/*.err (ublk-aot
--stats), RUNDIR/extra/* and, when present, RUNDIR/hostload.txt (written by
scripts/bench.sh); prints Markdown on stdout.  Every figure is the median of
the rounds that produced a result; the number of samples is shown when it is
below the number of rounds.
"""
import glob
import json
import os
import re
import statistics
import sys

TARGETS = ["aot-null", "aot-null-huge", "aot-mem", "aot-file", "aot-file-fixed", "kublk-null", "kublk-loop", "nullblk", "loop"]
LABEL = {
    "aot-null": "ublk-aot null", "aot-mem": "ublk-aot mem", "aot-file": "ublk-aot file",
    "aot-file-fixed": "ublk-aot file --fixed-buffers",
    "aot-null-huge": "ublk-aot null --huge-buffers",
    "kublk-null": "kublk null", "kublk-loop": "kublk loop",
    "nullblk": "kernel null_blk", "loop": "kernel loop (dio)",
}
# Reference of each target: same-kind kublk target, and the kernel device.
KUBLK_REF = {"aot-null": "kublk-null", "aot-null-huge": "kublk-null", "aot-mem": "kublk-null", "aot-file": "kublk-loop", "aot-file-fixed": "kublk-loop"}
KERNEL_REF = {"aot-null": "nullblk", "aot-null-huge": "nullblk", "aot-mem": "nullblk", "aot-file": "loop", "aot-file-fixed": "loop",
              "kublk-null": "nullblk", "kublk-loop": "loop"}
WORKLOADS = [  # name, label, big-block (MB/s instead of IOPS)
    ("rr4k-qd1", "4k randread QD1", False),
    ("rr4k-qd64", "4k randread QD64", False),
    ("rw4k-qd1", "4k randwrite QD1", False),
    ("rw4k-qd64", "4k randwrite QD64", False),
    ("rr4k-qd128-2q", "4k randread QD128 (2 jobs x 64, 2 queues)", False),
    ("sr128k-qd16", "128k seq read QD16", True),
    ("sw128k-qd16", "128k seq write QD16", True),
]
STATS_RE = re.compile(r"(\w+)=(-?\d+)")
LAT_KINDS = set()  # which fio latency the percentiles came from: "lat" and/or "clat"


def read_meta(d):
    meta = {}
    try:
        with open(os.path.join(d, "meta.env")) as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    meta[k] = v
    except OSError:
        pass
    return meta


def fio_jobs(path):
    """{jobname: result} of a fio JSON (one entry per reporting group)."""
    try:
        with open(path) as f:
            text = f.read()
        # fio may print notices before the JSON document.
        doc = json.loads(text[text.index("{"):])
        jobs = doc["jobs"]
    except (OSError, ValueError, KeyError):
        return {}
    out = {}
    for job in jobs:
        r = job_result(job)
        if r is not None:
            out[job.get("jobname", "?")] = r
    return out


def fio_result(path):
    """The result of the first job of a fio JSON, or None."""
    jobs = fio_jobs(path)
    return next(iter(jobs.values()), None)


def job_result(job):
    """iops, MB/s, p50 and p99 latency (us), total ios of one fio job, or None.

    Latency: fio's total latency (lat_ns: submission to completion) when the
    job file asked for lat_percentiles, else the completion latency (clat)."""
    iops = bw = ios = 0.0
    p50 = p99 = None
    for d in ("read", "write"):
        s = job.get(d, {})
        if not s.get("total_ios"):
            continue
        iops += s["iops"]
        bw += s["bw_bytes"] / 1e6
        ios += s["total_ios"]
        pct = s.get("lat_ns", {}).get("percentile")
        if pct:
            LAT_KINDS.add("lat")
        else:
            pct = s.get("clat_ns", {}).get("percentile", {})
            LAT_KINDS.add("clat")
        if pct:  # for a mixed run keep the slower direction
            a, b = pct.get("50.000000", 0) / 1000, pct.get("99.000000", 0) / 1000
            p50 = a if p50 is None else max(p50, a)
            p99 = b if p99 is None else max(p99, b)
    if ios == 0:
        return None
    return {"iops": iops, "mbs": bw, "p50": p50 or 0.0, "p99": p99 or 0.0, "ios": ios}


def aot_stats(path):
    """Queue totals and process GC counts from ublk-aot --stats stderr."""
    q = {"loops": 0, "ios": 0, "alloc": 0, "qgc0": 0, "queues": 0}
    proc = None
    try:
        with open(path) as f:
            for line in f:
                kv = dict(STATS_RE.findall(line))
                if line.startswith("stats queue="):
                    q["queues"] += 1
                    q["loops"] += int(kv.get("loops", 0))
                    q["ios"] += sum(int(kv.get(k, 0)) for k in ("reads", "writes", "flushes", "discards", "write_zeroes"))
                    q["alloc"] += int(kv.get("alloc_bytes", 0))
                    q["qgc0"] += int(kv.get("gc0", 0))
                elif line.startswith("stats process"):
                    proc = {k: int(v) for k, v in kv.items()}
    except OSError:
        return None
    if q["queues"] == 0:
        return None
    q["proc"] = proc
    return q


def med(xs):
    return statistics.median(xs) if xs else None


def collect(d):
    """{(target, workload): medians} and {(target, queues): [--stats of each round]}."""
    res, stats = {}, {}
    for path in glob.glob(os.path.join(d, "runs", "*.json")):
        t, q, _r = os.path.basename(path)[:-5].split(".")
        for w, fr in fio_jobs(path).items():
            res.setdefault((t, w), []).append(fr)
        if t.startswith("aot-"):
            st = aot_stats(path[:-5] + ".err")
            if st:
                stats.setdefault((t, q), []).append(st)
    agg = {}
    for k, runs in res.items():
        a = {f: med([x[f] for x in runs]) for f in ("iops", "mbs", "p50", "p99")}
        a["n"] = len(runs)
        agg[k] = a
    return agg, stats


def stats_lines(stats):
    """ublk-aot --stats of the matrix devices: loops per I/O, allocations, GCs."""
    out = []
    for (t, q), sts in sorted(stats.items()):
        lp = [s["loops"] / s["ios"] for s in sts if s["ios"]]
        gcs = [sum((s["proc"] or {}).get(g, 0) for g in ("gc0", "gc1", "gc2")) for s in sts]
        out.append("| {} | {} | {} | {:.3f} ({}) | {:,} | {} |".format(
            LABEL[t], q[1:], len(sts), med(lp) if lp else 0, ", ".join(f"{x:.3f}" for x in lp),
            max(s["alloc"] for s in sts), max(gcs) if gcs else "?"))
    if not out:
        return ""
    return "\n".join(["| server | queues | devices | loops/IO median (each) | max bytes allocated by queue threads | max GCs (all generations) |",
                      "|---|--:|--:|--:|--:|--:|"] + out)


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}x"


def fmt_num(v, big):
    if v is None:
        return "–"
    return f"{v:,.0f}" if not big else f"{v:,.0f} MB/s"


def results_table(agg, rounds):
    out = ["| target | workload | IOPS / MB/s | p50 µs | p99 µs | vs kublk | vs kernel |",
           "|---|---|--:|--:|--:|--:|--:|"]
    for w, wl, big in WORKLOADS:
        f = "mbs" if big else "iops"
        for t in TARGETS:
            a = agg.get((t, w))
            if a is None:
                continue
            kr = agg.get((KUBLK_REF.get(t), w))
            kn = agg.get((KERNEL_REF.get(t), w))
            n = "" if a["n"] >= rounds else f" (n={a['n']})"
            out.append("| {} | {} | {}{} | {:.0f} | {:.0f} | {} | {} |".format(
                LABEL[t], wl, fmt_num(a[f], big), n, a["p50"], a["p99"],
                fmt_ratio(a[f], kr[f] if kr else None) if t in KUBLK_REF else "",
                fmt_ratio(a[f], kn[f] if kn else None) if t in KERNEL_REF else ""))
    return "\n".join(out)


def perf_counts(path):
    """{thread: {event: count}} from perf stat --per-thread -x, output."""
    per = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(",")
                if len(parts) < 4 or line.startswith("#"):
                    continue
                thread, val, ev = parts[0], parts[1], parts[3]
                try:
                    n = float(val)  # task-clock: msec; the tracepoints: counts
                except ValueError:
                    continue
                per.setdefault(thread, {})[ev] = n
    except OSError:
        return None
    return per or None


def strace_counts(path):
    total = enter = 0
    try:
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) >= 5 and p[-1] == "total":
                    total = int(p[3])
                elif len(p) >= 5 and p[-1] == "io_uring_enter":
                    enter = int(p[3])
    except (OSError, ValueError):
        return None
    return {"all": {"raw_syscalls:sys_enter": total, "syscalls:sys_enter_io_uring_enter": enter}}


def syscalls_table(d):
    rows = []
    for t in ("aot-null", "kublk-null", "aot-file", "aot-file-fixed", "kublk-loop"):
        for qd in (1, 64):
            pre = os.path.join(d, "extra", f"sys.{t}.qd{qd}")
            fr = fio_result(pre + ".json")
            if fr is None:
                continue
            tool = open(pre + ".tool").read().strip() if os.path.exists(pre + ".tool") else "none"
            per = perf_counts(pre + ".perf") if tool == "perf" else strace_counts(pre + ".strace") if tool == "strace" else None
            if not per:
                continue
            allsys = sum(v.get("raw_syscalls:sys_enter", 0) for v in per.values())
            enter = sum(v.get("syscalls:sys_enter_io_uring_enter", 0) for v in per.values())
            busiest = max(per.items(), key=lambda kv: kv[1].get("raw_syscalls:sys_enter", 0))
            cpu_ms = sum(v.get("task-clock", 0) for v in per.values())
            cpu = f"{cpu_ms * 1000 / fr['ios']:.1f}" if cpu_ms else "–"
            st = aot_stats(pre + ".err") if t.startswith("aot-") else None
            lp = f"{st['loops'] / st['ios']:.3f}" if st and st["ios"] else ""
            rows.append("| {} | {} | {:,.0f} | {:,.0f} | {:,.0f} | {:.3f} | {:.3f} | {} | {} | {} |".format(
                LABEL[t], f"4k randread QD{qd}", fr["iops"], fr["ios"], allsys, allsys / fr["ios"],
                enter / fr["ios"], lp, cpu,
                f"{tool}; busiest thread {busiest[0]}: {busiest[1].get('raw_syscalls:sys_enter', 0):,.0f}"))
    if not rows:
        return ""
    return "\n".join(["| server | workload | IOPS | I/Os | syscalls | syscalls/IO | io_uring_enter/IO | loops/IO (--stats) | server CPU µs/IO | counted with |",
                      "|---|---|--:|--:|--:|--:|--:|--:|--:|---|"] + rows)


def gc_line(d):
    pre = os.path.join(d, "extra", "gc.aot-mem")
    fr = fio_result(pre + ".json")
    st = aot_stats(pre + ".err")
    if fr is None or st is None:
        return ""
    p = st["proc"] or {}
    return ("ublk-aot mem, fio 4k randrw QD64 for 10 s ({:,.0f} I/Os): queue threads allocated {:,} bytes, "
            "queue gen0 collections {}; process gc0={} gc1={} gc2={}, allocated={:,} bytes in total "
            "(start-up and shutdown included).").format(
        fr["ios"], st["alloc"], st["qgc0"], p.get("gc0", "?"), p.get("gc1", "?"), p.get("gc2", "?"),
        p.get("allocated", 0))


def host_load(d):
    path = os.path.join(d, "hostload.txt")
    try:
        rows = [line.split() for line in open(path) if line.strip()]
        loads = [float(r[1]) for r in rows]
        qemus = [int(r[2]) for r in rows if len(r) > 2]
    except (OSError, ValueError, IndexError):
        return ""
    if not loads:
        return ""
    return ("host 1-min load average during the run: min {:.1f}, median {:.1f}, max {:.1f} "
            "(2 host CPUs; QEMU processes on the host, ours included: {}-{})").format(
        min(loads), statistics.median(loads), max(loads), min(qemus, default=0), max(qemus, default=0))


BEGIN, END = "<!-- bench-results:begin -->", "<!-- bench-results:end -->"


def update_doc(doc, text):
    """Replace what is between the result markers of DOC by TEXT."""
    with open(doc) as f:
        old = f.read()
    i, j = old.find(BEGIN), old.find(END)
    if i < 0 or j < i:
        sys.exit(f"report.py: {doc} has no '{BEGIN}' ... '{END}' markers")
    new = old[:i + len(BEGIN)] + "\n" + text.rstrip("\n") + "\n" + old[j:]
    with open(doc + ".tmp", "w") as f:
        f.write(new)
    os.replace(doc + ".tmp", doc)


def render(d):
    meta = read_meta(d)
    rounds = int(meta.get("rounds", 3))
    agg, stats = collect(d)
    lines = []
    lines.append("Date {} (UTC), run `{}`: guest kernel {}, {} guest CPUs ({}), {} MiB RAM; {}; {} round(s), "
                 "each fio job {} s ramp + {} s; ublk queue depth {}; kernel ublk features {}; loop dio={}; "
                 "backing file {} on tmpfs (ublk-aot file, kublk loop, loop); ublk-aot mem {} (written in full "
                 "before each device is measured).".format(
                     meta.get("date", "?"), os.path.basename(os.path.normpath(d)), meta.get("kernel", "?"),
                     meta.get("cpus", "?"), meta.get("cpu_model", "?"), int(meta.get("mem_kb", 0)) // 1024,
                     meta.get("fio", "fio"), rounds, meta.get("ramp", "?"), meta.get("runtime", "?"),
                     meta.get("depth", "?"), meta.get("ublk_features", "?"), meta.get("loop_dio", "?"),
                     meta.get("file_size", "?"), meta.get("mem_size", "?")))
    ctx = [meta.get(k, "") for k in ("host", "vm", "placement")] + [host_load(d)]
    if meta.get("ublk_aot"):
        ctx.append(meta["ublk_aot"])
    if meta.get("kublk_build"):
        ctx.append("kublk: " + meta["kublk_build"].replace(";", ", "))
    if meta.get("wall_seconds"):
        ctx.append("whole bench {} min wall".format(round(int(meta["wall_seconds"]) / 60)))
    ctx = [c for c in ctx if c]
    if ctx:
        lines += ["", "; ".join(ctx) + "."]
    lines += ["", results_table(agg, rounds), ""]
    lat = {"lat": "fio's total latency per I/O (submission to completion)",
           "clat": "fio's completion latency (clat: without the submission part)"}
    lines.append("vs kublk: throughput ÷ kublk's on the same workload (null for null/mem, loop for file); "
                 "vs kernel: ÷ null_blk (null, mem) or loop with direct I/O (file). "
                 "Latencies: " + (" / ".join(lat[k] for k in sorted(LAT_KINDS)) or "none") + ", "
                 "median over rounds of each round's percentile; 128k rows show MB/s (10^6 bytes). "
                 "(n=…) marks figures with fewer samples than rounds.")
    sl = stats_lines(stats)
    if sl:
        lines += ["", "ublk-aot `--stats` of the devices above (one device per target, round and queue count, "
                  "serving the whole matrix; loops = queue-loop iterations, one io_uring_enter each):", "", sl]
    sc = syscalls_table(d)
    if sc:
        lines += ["", "Server syscalls and CPU time (perf task-clock) during one 5 s fio run (no ramp), all threads of the server process:", "", sc]
    g = gc_line(d)
    if g:
        lines += ["", "GC: " + g]
    return "\n".join(lines) + "\n"


def main():
    args = sys.argv[1:]
    doc = None
    if len(args) == 3 and args[1] == "--doc":
        doc = args[2]
    elif len(args) != 1:
        sys.exit("usage: report.py RUNDIR [--doc FILE]")
    text = render(args[0])
    if doc:
        update_doc(doc, text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
