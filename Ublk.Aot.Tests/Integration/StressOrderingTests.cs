using System;
using System.Buffers.Binary;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Threading;
using Ublk.Aot.Interop;
using Xunit;
using Xunit.Abstractions;
using static Ublk.Aot.Tests.Integration.IntegrationEnv;

namespace Ublk.Aot.Tests.Integration;

/// <summary>
/// Ordering: threads race overlapping O_DIRECT writes, reads and fsyncs on a few 4 KiB blocks; every operation is
/// recorded with start and end times; afterwards a per-block single-copy model checks each value a read returned:
/// it must come from a write that covers the block, started before the read ended, and was not certainly overwritten
/// (another write of the block that started after it completed and itself completed before the read started).
/// A fresh block (zeros) is only allowed while no write of it has completed before the read started.
/// Concurrent overlapping requests have no atomicity guarantee, so a block may mix two writes (counted, reported),
/// but each part must pass the same check. UBLK_ORDERING_DURATION (10s per backend) sets the run length.
/// </summary>
[Collection(UblkCollection.Name), Trait("Category", "Integration")]
public sealed class StressOrderingTests(ITestOutputHelper output)
{
    private const int Block = 4096;
    private const int Blocks = 16;
    private const long RegionStart = 1 << 20;
    private const int RecordSize = 16; // {write id, device offset of the block}, repeated over the block

    private enum Kind : byte { Write, Read, Fsync }

    private sealed class Op
    {
        public Kind Kind;
        public int First, Count;
        public long Id;         // writes: unique id > 0
        public long Start, End; // Stopwatch timestamps around the syscall
        public long[][]? Seen;  // reads: per block, the distinct write ids found (0 = never written)
        public string?[]? Layout; // reads: per mixed block, its records as runs "count x id"
        public int Thread;

        public override string ToString() => Kind.ToString().ToLowerInvariant() + (Kind == Kind.Write ? " #" + Id : "") + " of blocks " + First + ".." +
            (First + Count - 1) + " by thread " + Thread + " [" + Start + ", " + End + "]";
    }

    [Theory]
    [InlineData("mem")]
    [InlineData("file")]
    public void Overlapping_io_is_linearizable_per_block(string kind)
    {
        TimeSpan duration = StressKnobs.Duration("UBLK_ORDERING_DURATION", TimeSpan.FromSeconds(10));
        int seed = StressKnobs.Seed();
        const int threads = 6;
        string dir = TempDir("ordering-" + kind);
        string img = Path.Combine(dir, "ordering.img");
        File.Delete(img);
        string spec = kind == "mem" ? "mem:16M" : "file:" + img + ",size=16M";
        using ServerProcess s = ServerProcess.Start("--backend " + spec + " --queues 4 --depth 32 --stats");
        string dev = s.DevicePath;

        long nextId = 0;
        var logs = new List<Op>[threads];
        var failures = new string?[threads];
        var ts = new Thread[threads];
        for (int t = 0; t < threads; t++)
        {
            int me = t;
            logs[t] = new List<Op>();
            ts[t] = StressThreads.Start("order" + t, () =>
            {
                try { failures[me] = RunThread(me, dev, seed + me, duration, logs[me], ref nextId); }
                catch (Exception e) { failures[me] = e.ToString(); }
            });
        }
        StressThreads.AssertAllEnd(ts, duration + TimeSpan.FromMinutes(3), dev + ": ordering threads", s.Pid);
        foreach (string? f in failures) Assert.True(f == null, dev + " (seed " + seed + "): " + f);

        // One last read of every block, after everything: it must show a write nobody certainly overwrote.
        var all = logs.SelectMany(l => l).ToList();
        var final = new List<Op>();
        Assert.Null(RunFinalRead(dev, final));
        all.AddRange(final);

        CheckHistory(dev, all, seed, out int torn);
        int writes = all.Count(o => o.Kind == Kind.Write), reads = all.Count(o => o.Kind == Kind.Read), syncs = all.Count(o => o.Kind == Kind.Fsync);
        output.WriteLine(dev + " (" + kind + "): " + writes + " writes, " + reads + " reads, " + syncs + " fsyncs checked; " + torn + " block reads mixed two concurrent writes");
        Assert.True(writes > 100 && reads > 100, "too little concurrency to prove anything: " + writes + " writes, " + reads + " reads");

        Assert.Equal(0, s.Stop());
        Assert.True(s.StatSum("errors") == 0, s.Stderr);
        if (kind == "file") Assert.True(s.StatSum("flushes") > 0, "no FLUSH reached the server:\n" + s.Stderr);
        Directory.Delete(dir, true);
    }

    private static string? RunThread(int thread, string dev, int seed, TimeSpan duration, List<Op> log, ref long nextId)
    {
        int fd = StressIo.OpenDirect(dev);
        if (fd < 0) return "open " + dev + ": " + Errno.Name(fd);
        var rnd = new Random(seed);
        using var buf = new StressBuffer(Blocks * Block);
        try
        {
            var sw = Stopwatch.StartNew();
            while (sw.Elapsed < duration)
            {
                int p = rnd.Next(100);
                var op = new Op { Thread = thread };
                if (p < 45)
                {
                    op.Kind = Kind.Write;
                    op.Count = rnd.Next(1, 5);
                    op.First = rnd.Next(0, Blocks - op.Count + 1);
                    op.Id = Interlocked.Increment(ref nextId);
                    Fill(buf.Span(op.Count * Block), op.Id, op.First);
                    op.Start = Stopwatch.GetTimestamp();
                    long r = StressIo.PWrite(fd, buf, op.Count * Block, RegionStart + (long)op.First * Block);
                    op.End = Stopwatch.GetTimestamp();
                    if (r != op.Count * Block) return "pwrite(" + op.Count * Block + " bytes at " + (RegionStart + (long)op.First * Block) + ") = " + StressIo.Describe(r, op.Count * Block);
                }
                else if (p < 92)
                {
                    op.Kind = Kind.Read;
                    op.Count = rnd.Next(1, Blocks + 1);
                    op.First = rnd.Next(0, Blocks - op.Count + 1);
                    string? err = Read(fd, buf, op, dev);
                    if (err != null) return err;
                }
                else
                {
                    op.Kind = Kind.Fsync;
                    op.Start = Stopwatch.GetTimestamp();
                    int r = StressIo.Fsync(fd);
                    op.End = Stopwatch.GetTimestamp();
                    if (r != 0) return "fdatasync = " + StressIo.Describe(r, 0);
                }
                log.Add(op);
            }
            return null;
        }
        finally
        {
            Libc.Close(fd);
        }
    }

    private static string? RunFinalRead(string dev, List<Op> log)
    {
        int fd = StressIo.OpenDirect(dev);
        if (fd < 0) return "open " + dev + ": " + Errno.Name(fd);
        using var buf = new StressBuffer(Blocks * Block);
        try
        {
            var op = new Op { Kind = Kind.Read, First = 0, Count = Blocks, Thread = -1 };
            string? err = Read(fd, buf, op, dev);
            log.Add(op);
            return err;
        }
        finally { Libc.Close(fd); }
    }

    private static void Fill(Span<byte> data, long id, int firstBlock)
    {
        for (int b = 0; b < data.Length / Block; b++)
        {
            long blockOffset = RegionStart + (long)(firstBlock + b) * Block;
            for (int r = 0; r < Block; r += RecordSize)
            {
                BinaryPrimitives.WriteInt64LittleEndian(data[(b * Block + r)..], id);
                BinaryPrimitives.WriteInt64LittleEndian(data[(b * Block + r + 8)..], blockOffset);
            }
        }
    }

    /// <summary>Reads op's blocks and records the write ids found in each; wrong structure is an immediate error.</summary>
    private static string? Read(int fd, StressBuffer buf, Op op, string dev)
    {
        int len = op.Count * Block;
        op.Start = Stopwatch.GetTimestamp();
        long r = StressIo.PRead(fd, buf, len, RegionStart + (long)op.First * Block);
        op.End = Stopwatch.GetTimestamp();
        if (r != len) return "pread(" + len + " bytes at " + (RegionStart + (long)op.First * Block) + ") = " + StressIo.Describe(r, len);
        ReadOnlySpan<byte> data = buf.Span(len);
        op.Seen = new long[op.Count][];
        op.Layout = new string?[op.Count];
        var ids = new List<long>(2);
        for (int b = 0; b < op.Count; b++)
        {
            long blockOffset = RegionStart + (long)(op.First + b) * Block;
            ids.Clear();
            for (int rec = 0; rec < Block; rec += RecordSize)
            {
                ReadOnlySpan<byte> record = data.Slice(b * Block + rec, RecordSize);
                long id = BinaryPrimitives.ReadInt64LittleEndian(record);
                long at = BinaryPrimitives.ReadInt64LittleEndian(record[8..]);
                bool fresh = id == 0 && at == 0;
                if (!fresh && (at != blockOffset || id <= 0))
                {
                    var expected = new byte[RecordSize];
                    BinaryPrimitives.WriteInt64LittleEndian(expected.AsSpan(8), blockOffset);
                    return dev + ": offset " + (blockOffset + rec) + ": expected a record {write id, " + blockOffset + "} (bytes ????????????????" +
                        Convert.ToHexString(expected, 8, 8) + "), actual " + Convert.ToHexString(record) + " (id " + id + ", offset " + at + ")";
                }
                long v = fresh ? 0 : id;
                if (!ids.Contains(v)) ids.Add(v);
            }
            op.Seen[b] = ids.ToArray();
            if (ids.Count > 1) op.Layout[b] = Layout(data.Slice(b * Block, Block));
        }
        return null;
    }

    /// <summary>A block's records as runs: "200 x #12, 56 x #40".</summary>
    private static string Layout(ReadOnlySpan<byte> block)
    {
        var runs = new List<string>();
        long cur = -1;
        int n = 0;
        for (int rec = 0; rec < Block; rec += RecordSize)
        {
            long id = BinaryPrimitives.ReadInt64LittleEndian(block[rec..]);
            if (id != cur && n > 0) { runs.Add(n + " x #" + cur); n = 0; }
            cur = id;
            n++;
        }
        runs.Add(n + " x #" + cur);
        return string.Join(", ", runs);
    }

    private readonly record struct WriteSpan(long Id, long Start, long End);

    /// <summary>Checks every value every read saw against the single-copy model; fails with the first violation.</summary>
    private static void CheckHistory(string dev, List<Op> ops, int seed, out int torn)
    {
        var writesById = new Dictionary<long, Op>();
        foreach (Op o in ops)
            if (o.Kind == Kind.Write && !writesById.TryAdd(o.Id, o)) Assert.Fail("test bug: two writes with id " + o.Id + ": " + o + " and " + writesById[o.Id]);
        var perBlock = new List<WriteSpan>[Blocks];
        for (int b = 0; b < Blocks; b++) perBlock[b] = new List<WriteSpan>();
        foreach (Op o in ops)
        {
            if (o.Kind != Kind.Write) continue;
            for (int b = o.First; b < o.First + o.Count; b++) perBlock[b].Add(new WriteSpan(o.Id, o.Start, o.End));
        }
        // Per block: writes sorted by completion, with the latest start among those completed so far.
        var byEnd = new WriteSpan[Blocks][];
        var maxStartUpTo = new long[Blocks][];
        for (int b = 0; b < Blocks; b++)
        {
            byEnd[b] = perBlock[b].OrderBy(w => w.End).ToArray();
            maxStartUpTo[b] = new long[byEnd[b].Length];
            long m = long.MinValue;
            for (int i = 0; i < byEnd[b].Length; i++) maxStartUpTo[b][i] = m = Math.Max(m, byEnd[b][i].Start);
        }

        torn = 0;
        foreach (Op r in ops)
        {
            if (r.Kind != Kind.Read) continue;
            for (int i = 0; i < r.Count; i++)
            {
                int b = r.First + i;
                long[] seen = r.Seen![i];
                if (seen.Length > 1) torn++;
                // Writes of b that completed before the read started: the last index with End < r.Start.
                int done = UpperBound(byEnd[b], r.Start) - 1;
                long latestCertainStart = done >= 0 ? maxStartUpTo[b][done] : long.MinValue;
                foreach (long id in seen)
                {
                    string? why = null;
                    if (id == 0)
                    {
                        if (done >= 0) why = "the block still read as never written, but write #" + byEnd[b][done].Id + " of it had completed before the read started";
                    }
                    else if (!writesById.TryGetValue(id, out Op? w) || b < w.First || b >= w.First + w.Count)
                        why = "write #" + id + " never wrote this block";
                    else if (w.Start > r.End)
                        why = "write #" + id + " started after the read had ended";
                    else if (latestCertainStart > w.End)
                    {
                        WriteSpan newer = byEnd[b].Take(done + 1).First(x => x.Start > w.End);
                        why = "write #" + id + " was overwritten by write #" + newer.Id + " (which started after #" + id + " completed and completed before the read started)";
                    }
                    if (why == null) continue;
                    long blockOffset = RegionStart + (long)b * Block;
                    Assert.Fail(dev + ": offset " + blockOffset + " (block " + b + ", seed " + seed + "): " + why + ". Expected a record of one of " +
                        Allowed(byEnd[b], r, done) + ", actual record " + Record(id, blockOffset) + " (write #" + id + ")" +
                        (seen.Length > 1 ? "; the block mixed writes: " + r.Layout![i] : "") + "; the " + r +
                        (id > 0 && writesById.TryGetValue(id, out Op? ww) ? "; the " + ww : "") +
                        "; writes of this block around then: " + string.Join("; ", perBlock[b].Where(x => x.End > r.Start - 2_000_000_000L && x.Start < r.End + 1_000_000_000L).Select(x => writesById[x.Id].ToString())));
                }
            }
        }
    }

    private static int UpperBound(WriteSpan[] byEnd, long t)
    {
        int lo = 0, hi = byEnd.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) / 2;
            if (byEnd[mid].End < t) lo = mid + 1; else hi = mid;
        }
        return lo;
    }

    private static string Allowed(WriteSpan[] byEnd, Op r, int done)
    {
        long latest = done >= 0 ? byEnd.Take(done + 1).Max(w => w.Start) : long.MinValue;
        var ok = byEnd.Where(w => w.Start <= r.End && w.End >= latest).Select(w => "#" + w.Id).Take(12).ToList();
        if (done < 0) ok.Insert(0, "zeros");
        return "{" + string.Join(", ", ok) + "}";
    }

    private static string Record(long id, long blockOffset)
    {
        var rec = new byte[RecordSize];
        if (id != 0)
        {
            BinaryPrimitives.WriteInt64LittleEndian(rec, id);
            BinaryPrimitives.WriteInt64LittleEndian(rec.AsSpan(8), blockOffset);
        }
        return Convert.ToHexString(rec);
    }
}
