using System;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using System.Threading;
using Ublk.Aot.Interop;

namespace Ublk.Aot.Tests.Integration;

/// <summary>What a <see cref="StressWorker"/> does: the mix of operations (percentages; the rest are reads), sizes, pacing.</summary>
internal sealed class StressWorkload
{
    /// <summary>Offsets and lengths are multiples of this (the device's logical block size).</summary>
    public int Align { get; init; } = 512;
    /// <summary>Largest request; three in four are at most <see cref="SmallMax"/>.</summary>
    public int MaxLength { get; init; } = 256 * 1024;
    public int SmallMax { get; init; } = 16 * 1024;
    public int WritePercent { get; init; } = 50;
    public int ZeroOutPercent { get; init; }
    public int DiscardPercent { get; init; }
    public int FsyncPercent { get; init; }
    public TimeSpan Duration { get; init; } = TimeSpan.FromDays(1);
    /// <summary>Stop after this many operations (or the duration, whichever comes first).</summary>
    public long MaxOps { get; init; } = long.MaxValue;
    /// <summary>Re-read and compare the whole region this often (never when zero), and once at the end.</summary>
    public TimeSpan VerifyEvery { get; init; }
    public bool FinalVerify { get; init; } = true;
    /// <summary>
    /// The device is expected to go away under the worker (stop, kill): the first failed call ends the run and is
    /// recorded in <see cref="StressWorker.EndedBy"/>, not as a failure. Wrong data is a failure either way.
    /// </summary>
    public bool ErrorsEnd { get; init; }
}

/// <summary>
/// A thread owning one region of a block device: random O_DIRECT writes, reads, zero-outs, discards and fsyncs,
/// with an in-memory shadow of the region. Every read is compared with the shadow; the first difference is reported
/// with the device, the offset, the expected and the actual bytes, and the stamp found there.
/// Every 512-byte sector written starts with a stamp (its own device offset, worker, write number) so that data
/// found at the wrong place or from the wrong write can be named.
/// </summary>
internal sealed class StressWorker
{
    private readonly string _device;
    private readonly int _fd;
    private readonly long _start;
    private readonly StressWorkload _w;
    private readonly int _seed;
    private readonly Thread _thread;
    private volatile bool _stop;

    public int Index { get; }
    public long RegionStart => _start;
    public byte[] Shadow { get; }
    public long Ops, Reads, Writes, ZeroOuts, Discards, Fsyncs, Verifies, BytesRead, BytesWritten;
    /// <summary>Wrong data, an unexpected error or an exception: the test fails with this.</summary>
    public string? Failure { get; private set; }
    /// <summary>With <see cref="StressWorkload.ErrorsEnd"/>: the call that ended the run, e.g. "pwrite(…) = EIO".</summary>
    public string? EndedBy { get; private set; }
    public long EndedErrno { get; private set; }
    /// <summary>Milliseconds from <see cref="RequestStop"/> (or the start) to the end of the run.</summary>
    public long FinishedAtMs { get; private set; } = -1;
    public Thread Thread => _thread;

    /// <param name="initial">What the region holds now (a previous worker's shadow); null: zeros, as on a fresh device.</param>
    /// <param name="fd">An O_DIRECT fd of the device to use (and leave open); -1: the worker opens and closes its own.
    /// Each close of a writable fd makes udev probe the device again (inotify IN_CLOSE_WRITE), which costs dearly with
    /// many devices under emulation: tests that run workers one after another on many devices keep one fd open.</param>
    public StressWorker(int index, string device, long regionStart, long regionLength, StressWorkload workload, int seed, byte[]? initial = null, int fd = -1)
    {
        if (regionStart % workload.Align != 0 || regionLength % workload.Align != 0 || workload.MaxLength % workload.Align != 0)
            throw new ArgumentException("region and sizes must be multiples of " + workload.Align);
        Index = index;
        _fd = fd;
        _device = device;
        _start = regionStart;
        _w = workload;
        _seed = seed;
        Shadow = new byte[regionLength];
        if (initial != null) initial.AsSpan(0, (int)regionLength).CopyTo(Shadow);
        _thread = new Thread(Run, 1 << 20) { IsBackground = true, Name = "stress" + index };
    }

    private readonly Stopwatch _clock = new();

    private ManualResetEventSlim? _gate;

    /// <summary>
    /// Starts the thread; with a <paramref name="gate"/>, it waits for the gate before its first call. Starting many
    /// threads is slow once I/O saturates the emulated CPUs (each Start waits for the new thread to run), so tests
    /// with many workers start them all first and then open the gate.
    /// </summary>
    public void Start(ManualResetEventSlim? gate = null)
    {
        _gate = gate;
        _clock.Start();
        _thread.Start();
    }

    public void RequestStop()
    {
        _clock.Restart();
        _stop = true;
    }

    public bool Join(TimeSpan timeout) => _thread.Join(timeout);

    public string Name => "worker " + Index + " on " + _device + " [" + _start + ", " + (_start + Shadow.Length) + ") seed " + _seed;

    public string Summary => Name + ": " + Ops + " ops (" + Reads + " reads " + BytesRead / 1024 + " KiB, " + Writes + " writes " +
        BytesWritten / 1024 + " KiB, " + ZeroOuts + " zero-outs, " + Discards + " discards, " + Fsyncs + " fsyncs, " + Verifies + " full verifies)" +
        (EndedBy != null ? ", ended by " + EndedBy : "");

    private void Run()
    {
        try
        {
            _gate?.Wait();
            Loop();
        }
        catch (Exception e) { Failure ??= Name + ": " + e; }
        finally { FinishedAtMs = _clock.ElapsedMilliseconds; }
    }

    private void Loop()
    {
        int fd = _fd >= 0 ? _fd : StressIo.OpenDirect(_device);
        if (fd < 0)
        {
            if (_w.ErrorsEnd) { EndedBy = "open = " + Errno.Name(fd); EndedErrno = fd; }
            else Failure = Name + ": open(O_DIRECT) = " + Errno.Name(fd);
            return;
        }
        var rnd = new Random(_seed);
        using var buf = new StressBuffer(_w.MaxLength);
        try
        {
            var deadline = Stopwatch.StartNew();
            var sinceVerify = Stopwatch.StartNew();
            long region = Shadow.Length;
            while (!_stop && deadline.Elapsed < _w.Duration && Ops < _w.MaxOps)
            {
                int len = Length(rnd, region);
                long off = rnd.NextInt64(0, (region - len) / _w.Align + 1) * _w.Align;
                int p = rnd.Next(100);
                bool ok;
                if ((p -= _w.WritePercent) < 0) ok = Write(fd, buf, rnd, off, len);
                else if ((p -= _w.ZeroOutPercent) < 0) ok = Zero(fd, off, len, discard: false);
                else if ((p -= _w.DiscardPercent) < 0) ok = Zero(fd, off, len, discard: true);
                else if ((p -= _w.FsyncPercent) < 0) ok = Fsync(fd);
                else ok = Read(fd, buf, off, len);
                if (!ok) return;
                Ops++;
                if (_w.VerifyEvery > TimeSpan.Zero && sinceVerify.Elapsed >= _w.VerifyEvery)
                {
                    if (!VerifyAll(fd, buf)) return;
                    sinceVerify.Restart();
                }
            }
            if (_w.FinalVerify && (_w.FsyncPercent == 0 || Fsync(fd))) VerifyAll(fd, buf);
        }
        finally
        {
            if (_fd < 0) Libc.Close(fd);
        }
    }

    private int Length(Random rnd, long region)
    {
        int max = rnd.Next(4) == 0 ? _w.MaxLength : Math.Min(_w.SmallMax, _w.MaxLength);
        max = (int)Math.Min(max, region);
        return rnd.Next(1, max / _w.Align + 1) * _w.Align;
    }

    /// <summary>Records a failed call: the end of the run when errors are expected, else a failure. Returns false.</summary>
    private bool Error(string call, long result, int wanted)
    {
        string what = _device + ": " + call + " = " + StressIo.Describe(result, wanted);
        if (_w.ErrorsEnd) { EndedBy = what; EndedErrno = result < 0 ? result : 0; }
        else Failure = Name + ": " + what;
        return false;
    }

    private unsafe bool Write(int fd, StressBuffer buf, Random rnd, long off, int len)
    {
        Span<byte> data = buf.Span(len);
        rnd.NextBytes(data);
        long seq = Writes + 1;
        for (int s = 0; s < len; s += 512) Stamp(data.Slice(s, 16), _start + off + s, Index, seq);
        long r = StressIo.PWrite(fd, buf, len, _start + off);
        if (r != len) return Error("pwrite(" + len + " bytes at " + (_start + off) + ")", r, len);
        data.CopyTo(Shadow.AsSpan((int)off, len));
        Writes++;
        BytesWritten += len;
        return true;
    }

    private bool Zero(int fd, long off, int len, bool discard)
    {
        int r = discard ? StressIo.Discard(fd, _start + off, len) : StressIo.ZeroOut(fd, _start + off, len);
        if (r != 0) return Error((discard ? "BLKDISCARD(" : "BLKZEROOUT(") + (_start + off) + ", " + len + ")", r, 0);
        // Both backends under test read zeros after a discard (mem releases pages, file punches a hole).
        Shadow.AsSpan((int)off, len).Clear();
        if (discard) Discards++; else ZeroOuts++;
        return true;
    }

    private bool Fsync(int fd)
    {
        int r = StressIo.Fsync(fd);
        if (r != 0) return Error("fdatasync", r, 0);
        Fsyncs++;
        return true;
    }

    private bool Read(int fd, StressBuffer buf, long off, int len)
    {
        long r = StressIo.PRead(fd, buf, len, _start + off);
        if (r != len) return Error("pread(" + len + " bytes at " + (_start + off) + ")", r, len);
        Reads++;
        BytesRead += len;
        return Compare(buf.Span(len), off, "read #" + Reads);
    }

    private bool VerifyAll(int fd, StressBuffer buf)
    {
        int chunk = _w.MaxLength;
        for (long off = 0; off < Shadow.Length; off += chunk)
        {
            int len = (int)Math.Min(chunk, Shadow.Length - off);
            long r = StressIo.PRead(fd, buf, len, _start + off);
            if (r != len) return Error("pread(" + len + " bytes at " + (_start + off) + ", full verify)", r, len);
            if (!Compare(buf.Span(len), off, "full verify #" + (Verifies + 1))) return false;
        }
        Verifies++;
        return true;
    }

    private bool Compare(ReadOnlySpan<byte> actual, long off, string what)
    {
        ReadOnlySpan<byte> expected = Shadow.AsSpan((int)off, actual.Length);
        if (actual.SequenceEqual(expected)) return true;
        Failure = Name + ", " + what + ": " + MismatchMessage(_device, _start + off, expected, actual);
        return false;
    }

    /// <summary>Writes the 16-byte stamp of a sector: its device offset, then worker and write number.</summary>
    public static void Stamp(Span<byte> dest, long deviceOffset, int worker, long seq)
    {
        BinaryPrimitives.WriteInt64LittleEndian(dest, deviceOffset);
        BinaryPrimitives.WriteInt64LittleEndian(dest[8..], ((long)worker << 48) | seq);
    }

    /// <summary>"device D: first difference at offset O: expected …, actual …" and what the stamps of that sector say.</summary>
    public static string MismatchMessage(string device, long baseOffset, ReadOnlySpan<byte> expected, ReadOnlySpan<byte> actual)
    {
        var msg = new StringBuilder(BlockDevice.Diff(device, baseOffset, expected, actual));
        int i = 0;
        while (i < expected.Length && expected[i] == actual[i]) i++;
        int sector = i / 512 * 512;
        if (sector + 16 <= actual.Length)
        {
            msg.Append("; sector at ").Append(baseOffset + sector).Append(": expected ").Append(DescribeStamp(expected.Slice(sector, 16)))
               .Append(", found ").Append(DescribeStamp(actual.Slice(sector, 16)));
            int bad = 0;
            for (int k = sector; k < expected.Length; k++) if (expected[k] != actual[k]) bad++;
            msg.Append("; ").Append(bad).Append(" differing bytes from there to the end of the ").Append(actual.Length).Append("-byte read");
        }
        return msg.ToString();
    }

    private static string DescribeStamp(ReadOnlySpan<byte> s)
    {
        long off = BinaryPrimitives.ReadInt64LittleEndian(s);
        long tag = BinaryPrimitives.ReadInt64LittleEndian(s[8..]);
        if (off == 0 && tag == 0) return "zeros (never written, or zeroed)";
        return "stamp {written for offset " + off + ", worker " + (tag >> 48) + ", write #" + (tag & 0xFFFF_FFFF_FFFFL) + "}";
    }
}
