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
/// Concurrent overlapping requests have no atomicity guarantee: a block, and even a record, can mix bytes of two
/// writes (the copies race byte by byte; seen in practice). So each 16-byte record carries a check word; an intact
/// record must name an allowed write, and every byte of a torn one must equal that byte of some allowed write's
/// record. UBLK_ORDERING_DURATION (10s per backend) sets the run length.
/// </summary>
[Collection(UblkCollection.Name), Trait("Category", "Integration")]
public sealed class StressOrderingTests(ITestOutputHelper output)
{
    private const int Block = 4096;
    private const int Blocks = 16;
    private const long RegionStart = 1 << 20;
    // A record, repeated over each written block: write id (8 bytes), block number on the device (4), check word (4).
    private const int RecordSize = 16;

    private enum Kind : byte { Write, Read, Fsync }

    private sealed class Op
    {
        public Kind Kind;
        public int First, Count;
        public long Id;           // writes: unique id > 0
        public long Start, End;   // Stopwatch timestamps around the syscall
        public long[][]? Seen;    // reads: per block, the write ids of its intact records (0 = never written)
        public byte[][]?[]? Torn; // reads: per block, its distinct torn records (null: none)
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

        CheckHistory(dev, all, seed, out int mixed, out int tornRecords);
        int writes = all.Count(o => o.Kind == Kind.Write), reads = all.Count(o => o.Kind == Kind.Read), syncs = all.Count(o => o.Kind == Kind.Fsync);
        output.WriteLine(dev + " (" + kind + "): " + writes + " writes, " + reads + " reads, " + syncs + " fsyncs checked; " + mixed + " block reads mixed concurrent writes, " + tornRecords + " torn 16-byte records");
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

    private static uint Check(long id, uint block) => (uint)(((ulong)id * 0x9E3779B97F4A7C15UL ^ block * 0xC2B2AE3D27D4EB4FUL) >> 32) | 1;

    /// <summary>The record write <paramref name="id"/> puts in every 16 bytes of device block <paramref name="block"/> (zeros for id 0).</summary>
    private static byte[] Encode(long id, uint block)
    {
        var rec = new byte[RecordSize];
        if (id == 0) return rec;
        BinaryPrimitives.WriteInt64LittleEndian(rec, id);
        BinaryPrimitives.WriteUInt32LittleEndian(rec.AsSpan(8), block);
        BinaryPrimitives.WriteUInt32LittleEndian(rec.AsSpan(12), Check(id, block));
        return rec;
    }

    /// <summary>True for a record as one write left it (zeros for never written, else a matching check word).</summary>
    private static bool Intact(ReadOnlySpan<byte> record, out long id, out uint block)
    {
        id = BinaryPrimitives.ReadInt64LittleEndian(record);
        block = BinaryPrimitives.ReadUInt32LittleEndian(record[8..]);
        uint check = BinaryPrimitives.ReadUInt32LittleEndian(record[12..]);
        return id == 0 ? block == 0 && check == 0 : id > 0 && check == Check(id, block);
    }

    private static uint DeviceBlock(int b) => (uint)((RegionStart + (long)b * Block) / Block);

    private static void Fill(Span<byte> data, long id, int firstBlock)
    {
        for (int b = 0; b < data.Length / Block; b++)
        {
            byte[] rec = Encode(id, DeviceBlock(firstBlock + b));
            for (int r = 0; r < Block; r += RecordSize) rec.CopyTo(data[(b * Block + r)..]);
        }
    }

    /// <summary>Reads op's blocks and records what each holds; an intact record naming another block is an immediate error.</summary>
    private static string? Read(int fd, StressBuffer buf, Op op, string dev)
    {
        int len = op.Count * Block;
        op.Start = Stopwatch.GetTimestamp();
        long r = StressIo.PRead(fd, buf, len, RegionStart + (long)op.First * Block);
        op.End = Stopwatch.GetTimestamp();
        if (r != len) return "pread(" + len + " bytes at " + (RegionStart + (long)op.First * Block) + ") = " + StressIo.Describe(r, len);
        ReadOnlySpan<byte> data = buf.Span(len);
        op.Seen = new long[op.Count][];
        op.Torn = new byte[op.Count][][];
        op.Layout = new string?[op.Count];
        var ids = new List<long>(2);
        var torn = new List<byte[]>();
        for (int b = 0; b < op.Count; b++)
        {
            uint block = DeviceBlock(op.First + b);
            ids.Clear();
            torn.Clear();
            for (int rec = 0; rec < Block; rec += RecordSize)
            {
                ReadOnlySpan<byte> record = data.Slice(b * Block + rec, RecordSize);
                if (Intact(record, out long id, out uint at))
                {
                    if (id != 0 && at != block)
                        return dev + ": offset " + ((long)block * Block + rec) + ": expected a record of device block " + block + ", actual " +
                            Convert.ToHexString(record) + ": an intact record of write #" + id + " for device block " + at + " (offset " + (long)at * Block + ")";
                    if (!ids.Contains(id)) ids.Add(id);
                    continue;
                }
                bool known = false;
                foreach (byte[] t in torn) known |= record.SequenceEqual(t);
                if (!known) torn.Add(record.ToArray());
            }
            op.Seen[b] = ids.ToArray();
            op.Torn[b] = torn.Count > 0 ? torn.ToArray() : null;
            if (ids.Count + torn.Count > 1) op.Layout[b] = Layout(data.Slice(b * Block, Block));
        }
        return null;
    }

    /// <summary>A block's records as runs: "200 x #12, 56 x #40" (torn records show as "?").</summary>
    private static string Layout(ReadOnlySpan<byte> block)
    {
        var runs = new List<string>();
        string cur = "";
        int n = 0;
        for (int rec = 0; rec < Block; rec += RecordSize)
        {
            ReadOnlySpan<byte> r = block.Slice(rec, RecordSize);
            string v = Intact(r, out long id, out _) ? "#" + id : "?" + Convert.ToHexString(r);
            if (v != cur && n > 0) { runs.Add(n + " x " + cur); n = 0; }
            cur = v;
            n++;
        }
        runs.Add(n + " x " + cur);
        return string.Join(", ", runs);
    }

    private readonly record struct WriteSpan(long Id, long Start, long End);

    /// <summary>Checks every value every read saw against the single-copy model; fails with the first violation.</summary>
    private static void CheckHistory(string dev, List<Op> ops, int seed, out int mixed, out int tornRecords)
    {
        var writesById = new Dictionary<long, Op>();
        foreach (Op o in ops)
            if (o.Kind == Kind.Write && !writesById.TryAdd(o.Id, o)) Assert.Fail("test bug: two writes with id " + o.Id + ": " + o + " and " + writesById[o.Id]);
        var perBlock = new List<WriteSpan>[Blocks];
        for (int b = 0; b < Blocks; b++) perBlock[b] = new List<WriteSpan>();
        foreach (Op o in writesById.Values)
            for (int b = o.First; b < o.First + o.Count; b++) perBlock[b].Add(new WriteSpan(o.Id, o.Start, o.End));
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

        mixed = 0;
        tornRecords = 0;
        foreach (Op r in ops)
        {
            if (r.Kind != Kind.Read) continue;
            for (int i = 0; i < r.Count; i++)
            {
                int b = r.First + i;
                long[] seen = r.Seen![i];
                byte[][]? torn = r.Torn![i];
                if (seen.Length + (torn?.Length ?? 0) > 1) mixed++;
                // Writes of b that completed before the read started: the last index with End < r.Start.
                int done = UpperBound(byEnd[b], r.Start) - 1;
                long latest = done >= 0 ? maxStartUpTo[b][done] : long.MinValue;
                long blockOffset = RegionStart + (long)b * Block;
                string Context() => "; the " + r + (r.Layout![i] != null ? "; the block held: " + r.Layout[i] : "") +
                    "; writes of this block around then: " + string.Join("; ", perBlock[b]
                        .Where(x => x.End > r.Start - 2_000_000_000L && x.Start < r.End + 1_000_000_000L).Select(x => writesById[x.Id].ToString()));
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
                    else if (latest > w.End)
                    {
                        WriteSpan newer = byEnd[b].Take(done + 1).First(x => x.Start > w.End);
                        why = "write #" + id + " (" + w + ") was overwritten by write #" + newer.Id + " (which started after #" + id + " completed and completed before the read started)";
                    }
                    if (why == null) continue;
                    Assert.Fail(dev + ": offset " + blockOffset + " (block " + b + ", seed " + seed + "): " + why + ". Expected a record of one of " +
                        AllowedText(byEnd[b], r, latest, done) + ", actual record " + Convert.ToHexString(Encode(id, DeviceBlock(b))) + " (write #" + id + ")" + Context());
                }
                if (torn == null) continue;
                tornRecords += torn.Length;
                // A torn record: each byte must be that byte of some allowed write's record (or of zeros, when allowed).
                var allowed = byEnd[b].Where(w => w.Start <= r.End && w.End >= latest).Select(w => Encode(w.Id, DeviceBlock(b))).ToList();
                if (done < 0) allowed.Add(new byte[RecordSize]);
                foreach (byte[] rec in torn)
                {
                    for (int k = 0; k < RecordSize; k++)
                    {
                        if (allowed.Exists(a => a[k] == rec[k])) continue;
                        Assert.Fail(dev + ": offset " + blockOffset + " (block " + b + ", seed " + seed + "): a torn record whose byte " + k + " (0x" +
                            rec[k].ToString("x2") + ") belongs to no write allowed here. Expected bytes of one of " + AllowedText(byEnd[b], r, latest, done) +
                            ", actual record " + Convert.ToHexString(rec) + Context());
                    }
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

    private static string AllowedText(WriteSpan[] byEnd, Op r, long latest, int done)
    {
        var ok = byEnd.Where(w => w.Start <= r.End && w.End >= latest).Select(w => "#" + w.Id).Take(12).ToList();
        if (done < 0) ok.Insert(0, "zeros");
        return "{" + string.Join(", ", ok) + "}";
    }
}
