#!/usr/bin/env python3
"""nbd-trace.py RUN: per-request phases of the 4k QD1 reads traced by nbd-trace.sh.

Reads RUN/{aot-cpu1,aot-cpu0,nbd}.trace.txt (ftrace text) and RUN/*.clean.json (untraced fio) and prints one
Markdown table of medians in microseconds.  A request is followed from its block_rq_issue in fio to its
block_rq_complete; at QD1 every event in between belongs to it.
"""
import json
import re
import statistics
import sys
from pathlib import Path

LINE = re.compile(r"\s*(.+?)-(\d+)\s+\[(\d+)\]\s+\S+\s+([\d.]+):\s+(\w+)[:(]?\s*(.*)")
RESULT = re.compile(r"result (-?\d+),")

# (key, label) in order; a phase is the time from the previous key to this one.
AOT = [("issue", "fio issues the request"), ("qrun", "the queue thread runs (after fio's wake-up)"),
       ("fetch", "its FETCH completion is posted"), ("sendsub", "the send SQE is submitted"),
       ("sent", "the send completes (nbdkit woken)"), ("srvsent", "nbdkit's last reply write returns"),
       ("rx", "the RECV with the data completes"), ("commit", "the COMMIT_AND_FETCH is submitted"),
       ("done", "the block request completes")]
NBD = [("issue", "fio issues the request"), ("sent", "nbd.ko sent it (in fio's context)"),
       ("srvsent", "nbdkit's last reply write returns"), ("rx", "nbd.ko received the payload"),
       ("done", "the block request completes")]


def events(path):
    for line in open(path, errors="replace"):
        if line.startswith("#"):
            continue
        m = LINE.match(line)
        if m:
            yield float(m.group(4)) * 1e6, m.group(1), m.group(5), m.group(6)


def requests(path, aot):
    cur, out = None, []
    for t, comm, name, rest in events(path):
        if name == "block_rq_issue" and comm == "fio" and " R 4096 " in rest:
            cur = {"issue": t}
            continue
        if cur is None:
            continue
        if name == "block_rq_complete":
            cur["done"] = t
            out.append(cur)
            cur = None
        elif comm == "nbdkit" and name == "sys_sendto" and "-> 0x1000" in rest:
            cur.setdefault("srvsent", t)
        elif aot:
            r = RESULT.search(rest)
            if name == "sched_switch" and "next_comm=ublk" in rest and "fetch" not in cur:
                cur.setdefault("qrun", t)
            elif comm.startswith("ublk") and name == "io_uring_complete" and "fetch" not in cur and r and r.group(1) == "0":
                cur["fetch"] = t
            elif comm.startswith("ublk") and name == "io_uring_submit_req" and re.search(r"opcode SEND(MSG)?,", rest):
                cur.setdefault("sendsub", t)
            elif name == "io_uring_complete" and r and int(r.group(1)) == 28 and "sendsub" in cur:
                cur.setdefault("sent", t)
            elif comm.startswith("ublk") and name == "io_uring_complete" and r and int(r.group(1)) >= 4096 and "srvsent" in cur:
                cur.setdefault("rx", t)
            elif comm.startswith("ublk") and name == "io_uring_submit_req" and "URING_CMD" in rest and "rx" in cur:
                cur.setdefault("commit", t)
        elif name == "nbd_header_sent":
            cur.setdefault("sent", t)
        elif name == "nbd_payload_received":
            cur.setdefault("rx", t)
    return out


def phases(path, keys, aot):
    reqs = [r for r in requests(path, aot) if all(k in r for k, _ in keys)]
    rows = []
    for (a, _), (b, label) in zip(keys, keys[1:]):
        rows.append((label, statistics.median(r[b] - r[a] for r in reqs) if reqs else float("nan")))
    total = statistics.median(r["done"] - r["issue"] for r in reqs) if reqs else float("nan")
    return rows, total, len(reqs)


def kblockd_runs(path):
    """How often blk-mq ran a hardware queue from kblockd (a second dispatch pass) in the window."""
    return sum(1 for _, _, name, rest in events(path) if name == "workqueue_execute_start" and "blk_mq_run_work_fn" in rest)


def clean(run, name):
    try:
        j = json.load(open(run / f"{name}.clean.json"))["jobs"][0]["read"]
        return f"{j['iops']:,.0f} IOPS, {j['lat_ns']['mean'] / 1000:,.0f} us mean"
    except (OSError, ValueError, KeyError, IndexError):
        return "?"


def main():
    run = Path(sys.argv[1])
    meta = run / "meta.env"
    if meta.exists():
        print("Run `%s`: %s" % (run.name, "; ".join(line.strip() for line in open(meta) if line.strip())))
    for name, keys, aot in (("aot-cpu1", AOT, True), ("aot-cpu0", AOT, True), ("nbd", NBD, False)):
        rows, total, n = phases(run / f"{name}.trace.txt", keys, aot)
        print(f"\n{name}: untraced {clean(run, name)}; traced: {n} whole requests, median {total:,.0f} us; "
              f"kblockd queue runs in the window: {kblockd_runs(run / f'{name}.trace.txt')}\n")
        print("| phase ending when | median us |\n|---|---:|")
        for label, v in rows:
            print(f"| {label} | {v:,.0f} |")


if __name__ == "__main__":
    main()
