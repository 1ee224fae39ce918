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

# The io-mode matrix (matrix.sh MODE_TARGETS): aot-BACKEND-MODE against kublk
# in the same mode (kublk-null-F for null and mem, kublk-loop-F for file).
MODES = [("copy", "copy", ""), ("uc", "user-copy", "-u"), ("zc", "zero-copy", "-z"), ("abr", "auto-buf-reg", "--auto_zc")]
AOT_MODE_TARGETS = []
for _b, _modes in (("null", ["copy", "uc", "zc", "abr"]), ("mem", ["copy", "uc"]), ("file", ["copy", "uc", "zc", "abr"])):
    for _m in _modes:
        _t = f"aot-{_b}-{_m}"
        AOT_MODE_TARGETS.append(_t)
        _word = dict((m, w) for m, w, _f in MODES)[_m]
        LABEL[_t] = f"ublk-aot {_b} {_word}"
        _k = "kublk-" + ("loop" if _b == "file" else "null")
        KUBLK_REF[_t] = _k if _m == "copy" else f"{_k}-{_m}"
        KERNEL_REF[_t] = "loop" if _b == "file" else "nullblk"
KUBLK_MODE_TARGETS = []
for _k in ("null", "loop"):
    for _m, _w, _f in MODES + [("b", "batch", "-b"), ("pio", "per-io daemons", "--nthreads 2 --per_io_tasks")]:
        _t = f"kublk-{_k}" if _m == "copy" else f"kublk-{_k}-{_m}"
        KUBLK_MODE_TARGETS.append(_t)
        LABEL[_t] = f"kublk {_k} {_f}".rstrip() if _f else f"kublk {_k}"
        KERNEL_REF[_t] = "nullblk" if _k == "null" else "loop"
MODE_TARGETS = AOT_MODE_TARGETS + KUBLK_MODE_TARGETS + ["nullblk", "loop"]
for _t in MODE_TARGETS:
    if _t not in TARGETS:
        TARGETS.append(_t)
# The live-stats A/B (matrix.sh BENCH_TARGETS=latency): aot-null-copy with and without the latency timing.
TARGETS.append("aot-null-copy-nolat")
LABEL["aot-null-copy-nolat"] = "ublk-aot null copy, UBLK_AOT_NO_LATENCY=1"
KUBLK_REF["aot-null-copy-nolat"] = "kublk-null"
KERNEL_REF["aot-null-copy-nolat"] = "nullblk"
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
    q = {"loops": 0, "ios": 0, "alloc": 0, "qgc0": 0, "queues": 0, "fallbacks": 0, "mode": "?"}
    proc = None
    try:
        with open(path) as f:
            for line in f:
                kv = dict(STATS_RE.findall(line))
                if line.startswith("stats io_mode="):
                    q["mode"] = line.split("=", 1)[1].strip()
                elif line.startswith("stats queue="):
                    q["fallbacks"] += int(kv.get("reg_fallbacks", 0))
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


ROUNDS = {}  # (target, workload) -> {round: fio result}


def collect(d):
    """{(target, workload): medians} and {(target, queues): [--stats of each round]}."""
    res, stats = {}, {}
    for path in glob.glob(os.path.join(d, "runs", "*.json")):
        t, q, r = os.path.basename(path)[:-5].split(".")
        for w, fr in fio_jobs(path).items():
            res.setdefault((t, w), []).append(fr)
            ROUNDS.setdefault((t, w), {})[int(r[1:])] = fr
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
        modes = sorted({s["mode"] for s in sts})
        out.append("| {} | {} | {} | {} | {:.3f} ({}) | {:,} | {} | {:,} |".format(
            LABEL.get(t, t), "/".join(modes), q[1:], len(sts), med(lp) if lp else 0, ", ".join(f"{x:.3f}" for x in lp),
            max(s["alloc"] for s in sts), max(gcs) if gcs else "?", max(s["fallbacks"] for s in sts)))
    if not out:
        return ""
    return "\n".join(["| server | io mode (stats) | queues | devices | loops/IO median (each) | max bytes allocated by queue threads | max GCs (all generations) | max reg_fallbacks |",
                      "|---|---|--:|--:|--:|--:|--:|--:|"] + out)


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


def thread_samples(path):
    """io-wq workers and CPU from matrix.sh's thread sampler (FILE.threads).

    Returns {"wq_max": most io-wq workers alive at one sample, "wq_tids": distinct
    workers seen, "wq_ticks": their CPU (utime+stime ticks, last - first sample),
    "proc_ticks": the whole thread group's CPU over the run, "hz": CLK_TCK} or None."""
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return None
    hz = 100
    procs, first, last = [], {}, {}
    for line in lines:
        if line.startswith("clk_tck="):
            hz = int(line.split("=", 1)[1] or 100)
            continue
        kind, _, rest = line.partition(" ")
        _ts, _, stat = rest.partition(" ")
        if ")" not in stat:
            continue
        head, _, tail = stat.rpartition(")")
        tid, _, comm = head.partition(" (")
        f = tail.split()
        try:
            ticks = int(f[11]) + int(f[12])  # fields 14, 15: utime, stime
        except (IndexError, ValueError):
            continue
        if kind == "P":
            procs.append(ticks)
        elif kind == "T" and comm.startswith("iou-wrk"):
            first.setdefault(tid, ticks)
            last[tid] = ticks
    # One pass over /proc/PID/task takes a few ms: group by pass, not by timestamp.
    passes, cur, prev = [], set(), None
    for line in lines:
        if line.startswith("T ") and "(iou-wrk" in line:
            ts = float(line.split()[1])
            if prev is not None and ts - prev > 0.2:
                passes.append(cur); cur = set()
            cur.add(line.split()[2]); prev = ts
    if cur:
        passes.append(cur)
    return {"wq_max": max((len(x) for x in passes), default=0), "wq_tids": len(first),
            "wq_ticks": sum(last[t] - first[t] for t in first),
            "proc_ticks": procs[-1] - procs[0] if len(procs) >= 2 else None, "hz": hz}


WL_LABEL = {w: l for w, l, _b in WORKLOADS}


def syscall_runs(d):
    """[(target, workload label, prefix)] of extra/sys.* runs, in a stable order."""
    runs = []
    for path in sorted(glob.glob(os.path.join(d, "extra", "sys.*.json"))):
        name = os.path.basename(path)[4:-5]
        if name.endswith(".prefill"):
            continue
        t, _, w = name.partition(".")
        if re.fullmatch(r"qd\d+", w):
            wl = f"4k randread QD{w[2:]}"
        else:
            wl = WL_LABEL.get(w, w)
        order = (TARGETS.index(t) if t in TARGETS else 99, [x[0] for x in WORKLOADS].index(w) if w in WL_LABEL else 0)
        runs.append((order, t, wl, path[:-5]))
    return [(t, wl, pre) for _o, t, wl, pre in sorted(runs)]


def syscalls_table(d):
    rows = []
    for t, wl, pre in syscall_runs(d):
        fr = fio_result(pre + ".json")
        if fr is None:
            continue
        tool = open(pre + ".tool").read().strip() if os.path.exists(pre + ".tool") else "none"
        per = perf_counts(pre + ".perf") if tool == "perf" else strace_counts(pre + ".strace") if tool == "strace" else None
        if not per:
            continue
        ios = fr["ios"]

        def tot(ev, sel=lambda th: True):
            return sum(v.get(ev, 0) for th, v in per.items() if sel(th))
        allsys = tot("raw_syscalls:sys_enter")
        enter = tot("syscalls:sys_enter_io_uring_enter")
        prw = tot("syscalls:sys_enter_pread64") + tot("syscalls:sys_enter_pwrite64")
        punts = tot("io_uring:io_uring_queue_async_work")
        has_punts = any("io_uring:io_uring_queue_async_work" in v for v in per.values())
        wq = lambda th: th.startswith("iou-wrk")
        cpu_ms = tot("task-clock")
        wq_ms = tot("task-clock", wq)
        ts = thread_samples(pre + ".threads")
        proc = "–"
        if ts and ts["proc_ticks"] is not None:
            proc = f"{ts['proc_ticks'] * 1e6 / ts['hz'] / ios:.1f}"
        wqs = f"{ts['wq_max']} ({ts['wq_tids']})" if ts else "–"
        st = aot_stats(pre + ".err") if t.startswith("aot-") else None
        lp = f"{st['loops'] / st['ios']:.3f}" if st and st["ios"] else ""
        rows.append("| {} | {} | {:,.0f} | {:,.0f} | {:.3f} | {:.3f} | {:.3f} | {} | {} | {} | {} | {} | {} | {} |".format(
            LABEL.get(t, t), wl, fr["iops"], ios, allsys / ios, enter / ios, prw / ios,
            f"{punts / ios:.3f}" if has_punts else "–", lp,
            f"{cpu_ms * 1000 / ios:.1f}" if cpu_ms else "–", f"{wq_ms * 1000 / ios:.1f}", proc, wqs, tool))
    if not rows:
        return ""
    return "\n".join(["| server | workload | IOPS | I/Os | syscalls/IO | io_uring_enter/IO | pread+pwrite/IO | io-wq punts/IO | loops/IO (--stats) | server CPU µs/IO (perf) | of it io-wq workers µs/IO | process CPU µs/IO (/proc) | io-wq workers: most at once (distinct) | counted with |",
                      "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"] + rows)


def per_round(t, w, f):
    return {r: x[f] for r, x in ROUNDS.get((t, w), {}).items()}


def ratio_rounds(a, b, w, f):
    """Per-round ratios a/b (same round of one boot) and their median."""
    ra, rb = per_round(a, w, f), per_round(b, w, f)
    rs = [ra[r] / rb[r] for r in sorted(ra) if r in rb and rb[r]]
    return (statistics.median(rs) if rs else None), rs


def fmt_rr(med_r, rs):
    if med_r is None:
        return "–"
    return f"{med_r:.2f}x" + (f" ({' / '.join(f'{x:.2f}' for x in rs)})" if len(rs) > 1 else "")


def wide_tables(agg, rounds):
    """The io-mode matrix: throughput of every target, then ublk-aot's ratios."""
    only = [t for t in MODE_TARGETS if t not in ("kublk-null", "kublk-loop", "nullblk", "loop")]
    if not any(k[0] in only for k in agg):
        return ""  # a run of the old targets: the long table
    wls = [(w, l, big) for w, l, big in WORKLOADS if any((t, w) in agg for t in MODE_TARGETS)]
    if not wls:
        return ""
    short = {"rr4k-qd1": "4k rr QD1", "rr4k-qd64": "4k rr QD64", "rw4k-qd1": "4k rw QD1", "rw4k-qd64": "4k rw QD64",
             "rr4k-qd128-2q": "4k rr QD128 2q", "sr128k-qd16": "128k sr QD16 MB/s", "sw128k-qd16": "128k sw QD16 MB/s"}
    out = ["Throughput (IOPS; 128k columns MB/s), median of the rounds:", "",
           "| target | " + " | ".join(short.get(w, w) for w, _l, _b in wls) + " |",
           "|---|" + "--:|" * len(wls)]
    for t in MODE_TARGETS:
        cells, any_ = [], False
        for w, _l, big in wls:
            a = agg.get((t, w))
            if a is None:
                cells.append("–")
                continue
            any_ = True
            v = a["mbs"] if big else a["iops"]
            cells.append(f"{v:,.0f}" + ("" if a["n"] >= rounds else f" (n={a['n']})"))
        if any_:
            out.append(f"| {LABEL.get(t, t)} | " + " | ".join(cells) + " |")
    out += ["", "ublk-aot ÷ kublk in the same mode (k) and ÷ the kernel device (n: null_blk for null and mem, "
            "loop with direct I/O for file); medians of the per-round ratios:", "",
            "| target | kublk ref | " + " | ".join(short.get(w, w) for w, _l, _b in wls) + " |",
            "|---|---|" + "--:|" * len(wls)]
    for t in AOT_MODE_TARGETS:
        if not any((t, w) in agg for w, _l, _b in wls):
            continue
        cells = []
        for w, _l, big in wls:
            f = "mbs" if big else "iops"
            k, _ = ratio_rounds(t, KUBLK_REF[t], w, f)
            n, _ = ratio_rounds(t, KERNEL_REF[t], w, f)
            cells.append(("k " + (f"{k:.2f}" if k is not None else "–")) + " / " + ("n " + (f"{n:.2f}" if n is not None else "–")))
        out.append(f"| {LABEL[t]} | {LABEL.get(KUBLK_REF[t], KUBLK_REF[t])} | " + " | ".join(cells) + " |")
    # kublk's own modes against the kernel device, for reference.
    out += ["", "kublk ÷ the kernel device, same boot:", "",
            "| target | " + " | ".join(short.get(w, w) for w, _l, _b in wls) + " |",
            "|---|" + "--:|" * len(wls)]
    for t in KUBLK_MODE_TARGETS:
        if not any((t, w) in agg for w, _l, _b in wls):
            continue
        cells = []
        for w, _l, big in wls:
            n, _ = ratio_rounds(t, KERNEL_REF[t], w, "mbs" if big else "iops")
            cells.append(f"{n:.2f}" if n is not None else "–")
        out.append(f"| {LABEL[t]} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def ab_table(agg, pairs, off, on):
    """A/B of target pairs in one boot: PAIRS = [(server label, target with, target without)]; OFF/ON name the sides."""
    rows = []
    for label, a, b in pairs:
        for w, l, big in WORKLOADS:
            if (a, w) not in agg or (b, w) not in agg:
                continue
            f = "mbs" if big else "iops"
            m, rs = ratio_rounds(a, b, w, f)
            rows.append("| {} | {} | {:,.0f} | {:,.0f} | {} | {:.0f} / {:.0f} |".format(
                label, l, agg[(b, w)][f], agg[(a, w)][f], fmt_rr(m, rs), agg[(b, w)]["p50"], agg[(a, w)]["p50"]))
    if not rows:
        return ""
    return "\n".join([f"| server | workload | {off} | {on} | {on} ÷ {off} (per round) | p50 µs {off} / {on} |",
                       "|---|---|--:|--:|--:|--:|"] + rows)


def kublk_ab(agg, suffix, flag):
    """kublk with FLAG (target kublk-K-SUFFIX) against kublk without it, same boot."""
    pairs = [(f"kublk {k}", f"kublk-{k}-{suffix}", f"kublk-{k}") for k in ("null", "loop")]
    return ab_table(agg, pairs, f"without {flag}", f"with {flag}")


def latency_ab(agg):
    """aot-null-copy (latency timed, the default) against aot-null-copy-nolat (UBLK_AOT_NO_LATENCY=1), same boot."""
    return ab_table(agg, [("ublk-aot null copy", "aot-null-copy", "aot-null-copy-nolat")], "timing off", "timing on")


def targets_check(agg):
    """The issue's targets (issue 11 item 5), met or missed, with the numbers."""
    out = []

    def have(t, w):
        return (t, w) in agg

    def best_file(w, f):
        c = [(agg[(t, w)][f], t) for t in ("aot-file-copy", "aot-file-uc", "aot-file-zc", "aot-file-abr") if have(t, w)]
        return max(c)[1] if c else None

    def verdict(m, rs, goal):
        if m is None:
            return "not measured"
        held = sum(1 for x in rs if x >= goal)
        return ("**met**" if m >= goal else "**missed**") + f" (median {m:.2f}x; {held} of {len(rs)} rounds ≥ {goal}x)"

    for w in ("sr128k-qd16", "sw128k-qd16"):
        bt = best_file(w, "mbs")
        if not bt:
            continue
        for ref, goal in (("loop", 0.8), (KUBLK_REF[bt], 1.2)):
            m, rs = ratio_rounds(bt, ref, w, "mbs")
            out.append(f"- file, best mode at {WL_LABEL[w]} ({LABEL[bt]}, {agg[(bt, w)]['mbs']:,.0f} MB/s) ≥ {goal}x "
                       f"{LABEL.get(ref, ref)} ({agg[(ref, w)]['mbs'] if have(ref, w) else 0:,.0f} MB/s): "
                       f"{verdict(m, rs, goal)}; per round {fmt_rr(m, rs)}")
        # The same row for every file mode against kublk in that mode.
        cells = []
        for t in ("aot-file-copy", "aot-file-uc", "aot-file-zc", "aot-file-abr"):
            if have(t, w) and have(KUBLK_REF[t], w):
                m, rs = ratio_rounds(t, KUBLK_REF[t], w, "mbs")
                n, _ = ratio_rounds(t, "loop", w, "mbs")
                cells.append(f"{MODES_WORD[t]} {m:.2f}x kublk / {n:.2f}x loop" if m is not None and n is not None else f"{MODES_WORD[t]} –")
        if cells:
            out.append(f"  - every file mode at {WL_LABEL[w]}: " + "; ".join(cells))
    for w in ("rr4k-qd64", "rw4k-qd64"):
        bt = best_file(w, "iops")
        if not bt:
            continue
        m, rs = ratio_rounds(bt, "loop", w, "iops")
        auto = ""
        if have("aot-file-abr", w) and bt != "aot-file-abr":
            ma, rsa = ratio_rounds("aot-file-abr", "loop", w, "iops")
            auto = f"; auto's pick on 7.3 (auto-buf-reg): {fmt_rr(ma, rsa)}"
        out.append(f"- file {WL_LABEL[w]} ≥ 1.0x kernel loop: best mode {LABEL[bt]} "
                   f"({agg[(bt, w)]['iops']:,.0f} vs {agg[('loop', w)]['iops'] if have('loop', w) else 0:,.0f} IOPS): "
                   f"{verdict(m, rs, 1.0)}; per round {fmt_rr(m, rs)}{auto}")
    misses, n_rows = [], 0
    for t in ("aot-null-copy", "aot-null-uc", "aot-null-zc", "aot-null-abr"):
        for w, l, big in WORKLOADS:
            f = "mbs" if big else "iops"
            if not (have(t, w) and have(KUBLK_REF[t], w)):
                continue
            n_rows += 1
            m, rs = ratio_rounds(t, KUBLK_REF[t], w, f)
            if m is not None and m < 1.0:
                misses.append(f"{MODES_WORD[t]} {l} {fmt_rr(m, rs)}")
    if n_rows:
        out.append(f"- null ≥ 1.0x kublk in every mode and row: " +
                   ("**met** in all {} rows".format(n_rows) if not misses else
                    f"**missed** in {len(misses)} of {n_rows} rows: " + "; ".join(misses)))
    for w in ("sr128k-qd16", "sw128k-qd16"):
        for mt, nt in (("aot-mem-uc", "aot-null-uc"), ("aot-mem-copy", "aot-null-copy")):
            if have(mt, w) and have(nt, w):
                m, rs = ratio_rounds(mt, nt, w, "mbs")
                out.append(f"- mem at {WL_LABEL[w]} ≥ 0.5x null ({LABEL[mt]} {agg[(mt, w)]['mbs']:,.0f} MB/s vs "
                           f"{LABEL[nt]} {agg[(nt, w)]['mbs']:,.0f} MB/s): {verdict(m, rs, 0.5)}; per round {fmt_rr(m, rs)}")
    return "\n".join(out)


MODES_WORD = {t: LABEL[t].split()[-1] for t in AOT_MODE_TARGETS}


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
    wide = wide_tables(agg, rounds)
    old = [t for t in TARGETS if t not in MODE_TARGETS and any(k[0] == t for k in agg)]
    if wide:
        lines += ["", wide, "", "Latencies are in the raw fio JSON of the run (p50/p99 of fio's total latency); "
                  "MB/s are 10^6 bytes."]
        lines.append("")
        if old:  # old target names in the same run: the long table of those alone
            keep = {k: v for k, v in agg.items() if k[0] in old or k[0] in ("kublk-null", "kublk-loop", "nullblk", "loop")}
            lines += [results_table(keep, rounds), ""]
    else:
        lines += ["", results_table(agg, rounds), ""]
    lat = {"lat": "fio's total latency per I/O (submission to completion)",
           "clat": "fio's completion latency (clat: without the submission part)"}
    if not wide or old:
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
        lines += ["", "Server syscalls and CPU time during one 5 s fio run (no ramp), all threads of the server process "
                  "(perf stat --per-thread: syscalls, task-clock; io-wq workers are the `iou-wrk-*` threads; "
                  "process CPU from /proc/PID/stat before and after, at CLK_TCK resolution, io-wq workers included):", "", sc]
    tc = targets_check(agg)
    if tc:
        lines += ["", "Targets (issue 11 item 5); per-round ratios are of the same round, i.e. devices measured minutes apart in one boot:", "", tc]
    ba = kublk_ab(agg, "b", "-b")
    if ba:
        lines += ["", "Batch I/O A/B (kublk `-b`, UBLK_F_BATCH_IO, against kublk's copy mode, same boot):", "", ba]
    la = latency_ab(agg)
    if la:
        lines += ["", "Live-stats counters A/B (ublk-aot null, copy mode, with and without the per-request latency "
                  "timing, UBLK_AOT_NO_LATENCY=1; same boot):", "", la]
    pa = kublk_ab(agg, "pio", "--per_io_tasks")
    if pa:
        lines += ["", "Per-I/O daemons A/B (kublk `--nthreads 2 --per_io_tasks`, UBLK_F_PER_IO_DAEMON: two threads share "
                  "each queue's tags, against kublk's one thread per queue, same boot):", "", pa]
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
