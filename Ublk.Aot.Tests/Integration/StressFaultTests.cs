using System;
using System.Collections.Generic;
using System.IO;
using System.Threading;
using Ublk.Aot.Interop;
using Xunit;
using Xunit.Abstractions;
using static Ublk.Aot.Tests.Integration.IntegrationEnv;

namespace Ublk.Aot.Tests.Integration;

/// <summary>
/// fault: backend errors reach pread/pwrite on /dev/ublkbN, and nothing else changes. Injection is random per request,
/// so "exactly those" is proved per request: single-request 4 KiB O_DIRECT calls, where a successful write must read
/// back, a failed one must leave the old content (the fault backend refuses before touching storage), and the number
/// of failures userspace saw must equal the number of failed requests the server counted.
/// </summary>
[Collection(UblkCollection.Name), Trait("Category", "Integration")]
public sealed class StressFaultTests(ITestOutputHelper output)
{
    private const int Block = 4096;
    private const long MiB = 1 << 20;

    [Theory]
    [InlineData("write", "mem:64M", "copy")]
    [InlineData("read+write+flush", "file", "copy")]
    [InlineData("write", "mem:64M", "user-copy")]
    [InlineData("read+write+flush", "file", "user-copy")]
    [InlineData("read+write+flush", "file", "zero-copy")]
    [InlineData("read+write+flush", "file", "auto-buf-reg")]
    public void Injected_failures_are_exactly_the_failed_calls(string ops, string inner, string mode)
    {
        if (!IoModeTests.ServableOrRefused(mode, "null:1G")) return; // refusal asserted on this kernel
        int seed = StressKnobs.Seed();
        int rounds = StressKnobs.Count("UBLK_FAULT_OPS", 2000);
        string dir = TempDir("fault");
        string img = Path.Combine(dir, "fault.img");
        File.Delete(img);
        if (inner == "file") inner = "file:" + img + ",size=64M";
        const int blocks = 1024; // 4 MiB exercised
        var shadow = new byte[blocks * Block];
        var rnd = new Random(seed);
        int writeOk = 0, writeFailed = 0, readOk = 0, readFailed = 0, syncOk = 0, syncFailed = 0;
        bool faultsReads = ops.Contains("read"), faultsFlush = ops.Contains("flush");

        using (ServerProcess s = ServerProcess.Start("--backend fault:rate=0.1,ops=" + ops + ",seed=" + seed + ":" + inner + " --io-mode " + mode + " --stats"))
        {
            string dev = s.DevicePath;
            int fd = StressIo.OpenDirect(dev);
            Assert.True(fd >= 0, "open " + dev + ": " + Errno.Name(fd));
            using var buf = new StressBuffer(Block);
            try
            {
                for (int i = 0; i < rounds; i++)
                {
                    int b = rnd.Next(blocks);
                    long off = (long)b * Block;
                    int p = rnd.Next(100);
                    if (p < 55)
                    {
                        rnd.NextBytes(buf.Span(Block));
                        StressWorker.Stamp(buf.Span(16), off, 0, i + 1);
                        long r = StressIo.PWrite(fd, buf, Block, off);
                        if (r == Block) { buf.Span(Block).CopyTo(shadow.AsSpan((int)off, Block)); writeOk++; }
                        else if (r == -Errno.EIO) writeFailed++; // the old content must remain: shadow unchanged
                        else Assert.Fail(dev + ": pwrite(4096 at " + off + ") = " + StressIo.Describe(r, Block) + ", expected 4096 or EIO");
                    }
                    else if (p < 95)
                    {
                        long r = StressIo.PRead(fd, buf, Block, off);
                        if (r == -Errno.EIO && faultsReads) { readFailed++; continue; }
                        Assert.True(r == Block, dev + ": pread(4096 at " + off + ") = " + StressIo.Describe(r, Block) + (faultsReads ? ", expected 4096 or EIO" : ", expected 4096 (reads are not faulted)"));
                        readOk++;
                        Assert.True(buf.Span(Block).SequenceEqual(shadow.AsSpan((int)off, Block)),
                            "seed " + seed + ": " + StressWorker.MismatchMessage(dev, off, shadow.AsSpan((int)off, Block), buf.Span(Block)));
                    }
                    else
                    {
                        int r = StressIo.Fsync(fd);
                        if (r == -Errno.EIO && faultsFlush) syncFailed++;
                        else { Assert.True(r == 0, dev + ": fdatasync = " + StressIo.Describe(r, 0)); syncOk++; }
                    }
                }
                // Everything that was written (and nothing that failed) is there: read it all back, retrying injected read failures.
                for (int b = 0; b < blocks; b++)
                {
                    long off = (long)b * Block;
                    long r = 0;
                    for (int attempt = 0; attempt < 50; attempt++)
                    {
                        r = StressIo.PRead(fd, buf, Block, off);
                        if (r != -Errno.EIO || !faultsReads) break;
                        readFailed++;
                    }
                    Assert.True(r == Block, dev + ": pread(4096 at " + off + ") = " + StressIo.Describe(r, Block));
                    Assert.True(buf.Span(Block).SequenceEqual(shadow.AsSpan((int)off, Block)),
                        "seed " + seed + ", final read-back: " + StressWorker.MismatchMessage(dev, off, shadow.AsSpan((int)off, Block), buf.Span(Block)));
                }
            }
            finally { Libc.Close(fd); }

            Assert.Equal(0, s.Stop());
            int userFailures = writeFailed + readFailed + syncFailed;
            output.WriteLine(dev + " ops=" + ops + " seed " + seed + ": writes " + writeOk + " ok / " + writeFailed + " EIO, reads " + readOk + " ok / " +
                readFailed + " EIO, fsyncs " + syncOk + " ok / " + syncFailed + " EIO; server errors=" + s.StatSum("errors"));
            double writeRate = (double)writeFailed / (writeOk + writeFailed);
            Assert.True(writeRate > 0.05 && writeRate < 0.16, "write failure rate " + writeRate + " is far from rate=0.1 (" + writeFailed + " of " + (writeOk + writeFailed) + ")");
            long serverErrors = s.StatSum("errors");
            if (!faultsReads)
                Assert.True(serverErrors == userFailures, "the server failed " + serverErrors + " requests but userspace saw " + userFailures + " failures:\n" + s.Stderr);
            else
            {
                // The kernel's own reads (partition scan, udev's blkid) can be failed too: the server may count a few more.
                Assert.True(serverErrors >= userFailures && serverErrors <= userFailures + 40,
                    "the server failed " + serverErrors + " requests, userspace saw " + userFailures + " failures:\n" + s.Stderr);
                Assert.True(readFailed > 0, "no read failed with ops=" + ops);
                Assert.True(syncFailed > 0 || syncOk + syncFailed < 30, "no fsync failed with ops=" + ops + " (" + syncOk + " fsyncs)");
            }
        }
        AssertNoDevices();
        Directory.Delete(dir, true);
    }

    /// <summary>rate=1 on writes: every write fails (with the configured errno), reads return the untouched content.</summary>
    [Theory]
    [InlineData(0)]
    [InlineData(Errno.ENOSPC)]
    public void All_writes_fail_and_reads_see_the_old_content(int errno)
    {
        string dir = TempDir("fault-w");
        string img = Path.Combine(dir, "old.img");
        byte[] content = new byte[16 * MiB];
        new Random(7).NextBytes(content);
        File.WriteAllBytes(img, content);
        int expectErr = errno == 0 ? Errno.EIO : errno;
        string faultOpts = "rate=1,ops=write" + (errno == 0 ? "" : ",errno=" + errno);
        using (ServerProcess s = ServerProcess.Start("--backend fault:" + faultOpts + ":file:" + img + " --stats"))
        {
            string dev = s.DevicePath;
            int fd = StressIo.OpenDirect(dev);
            Assert.True(fd >= 0, "open " + dev + ": " + Errno.Name(fd));
            using var buf = new StressBuffer(1024 * 1024);
            var rnd = new Random(1);
            try
            {
                for (int i = 0; i < 48; i++)
                {
                    int len = (i % 3 == 0 ? rnd.Next(1, 257) : rnd.Next(1, 9)) * Block; // up to 1 MiB: split into several requests
                    long off = rnd.NextInt64(0, (content.Length - len) / Block + 1) * Block;
                    rnd.NextBytes(buf.Span(len));
                    long r = StressIo.PWrite(fd, buf, len, off);
                    Assert.True(r == -expectErr, dev + ": pwrite(" + len + " at " + off + ") = " + StressIo.Describe(r, len) + ", expected " + Errno.Name(expectErr));
                }
                for (long off = 0; off < content.Length; off += 1024 * 1024)
                {
                    long r = StressIo.PRead(fd, buf, 1024 * 1024, off);
                    Assert.True(r == 1024 * 1024, dev + ": pread(1 MiB at " + off + ") = " + StressIo.Describe(r, 1024 * 1024));
                    Assert.True(buf.Span(1024 * 1024).SequenceEqual(content.AsSpan((int)off, 1024 * 1024)),
                        "writes that failed changed data: " + StressWorker.MismatchMessage(dev, off, content.AsSpan((int)off, 1024 * 1024), buf.Span(1024 * 1024)));
                }
            }
            finally { Libc.Close(fd); }
            Assert.Equal(0, s.Stop());
            Assert.True(s.StatSum("writes") >= 48 && s.StatSum("errors") == s.StatSum("writes"), "every write should have failed:\n" + s.Stderr);
        }
        byte[] after = File.ReadAllBytes(img);
        Assert.True(after.AsSpan().SequenceEqual(content), StressWorker.MismatchMessage("backing file " + img, 0, content, after));
        Directory.Delete(dir, true);
    }

    /// <summary>rate=1 on reads: every read fails with EIO; writes succeed and land in the backing file.</summary>
    [Fact]
    public void All_reads_fail_and_writes_land()
    {
        string dir = TempDir("fault-r");
        string img = Path.Combine(dir, "r.img");
        File.Delete(img);
        var expect = new byte[16 * MiB];
        using (ServerProcess s = ServerProcess.Start("--backend fault:rate=1,ops=read:file:" + img + ",size=16M --stats"))
        {
            string dev = s.DevicePath;
            int fd = StressIo.OpenDirect(dev);
            Assert.True(fd >= 0, "open " + dev + ": " + Errno.Name(fd));
            using var buf = new StressBuffer(512 * 1024);
            var rnd = new Random(2);
            try
            {
                for (int i = 0; i < 48; i++)
                {
                    int len = rnd.Next(1, 129) * Block;
                    long off = rnd.NextInt64(0, (expect.Length - len) / Block + 1) * Block;
                    rnd.NextBytes(buf.Span(len));
                    long r = StressIo.PWrite(fd, buf, len, off);
                    Assert.True(r == len, dev + ": pwrite(" + len + " at " + off + ") = " + StressIo.Describe(r, len) + " (writes are not faulted)");
                    buf.Span(len).CopyTo(expect.AsSpan((int)off, len));
                    r = StressIo.PRead(fd, buf, len, off);
                    Assert.True(r == -Errno.EIO, dev + ": pread(" + len + " at " + off + ") = " + StressIo.Describe(r, len) + ", expected EIO");
                }
            }
            finally { Libc.Close(fd); }
            Assert.Equal(0, s.Stop());
        }
        byte[] after = File.ReadAllBytes(img);
        Assert.True(after.AsSpan().SequenceEqual(expect), StressWorker.MismatchMessage("backing file " + img, 0, expect, after));
        Directory.Delete(dir, true);
    }

    /// <summary>SIGTERM while threads keep hitting injected failures (in flight in the file backend's ring): no hang.</summary>
    [Fact]
    public void Stop_with_failures_in_flight_does_not_hang()
    {
        string dir = TempDir("fault-stop");
        string img = Path.Combine(dir, "s.img");
        File.Delete(img);
        using ServerProcess s = ServerProcess.Start("--backend fault:rate=0.5,ops=all:file:" + img + ",size=64M --queues 4 --depth 16 --stats");
        string dev = s.DevicePath;
        long ok = 0, injected = 0;
        var ended = new string?[4];
        var stop = new ManualResetEventSlim(false);
        var threads = new List<Thread>();
        for (int t = 0; t < 4; t++)
        {
            int me = t;
            threads.Add(StressThreads.Start("fault" + t, () =>
            {
                int fd = StressIo.OpenDirect(dev);
                if (fd < 0) { ended[me] = "open = " + Errno.Name(fd); return; }
                using var buf = new StressBuffer(64 * 1024);
                var rnd = new Random(me);
                try
                {
                    while (true)
                    {
                        long off = (me * 16L * MiB) + rnd.Next(0, 16 * 256 - 16) * (long)Block;
                        int len = rnd.Next(1, 17) * Block;
                        int kind = rnd.Next(3);
                        long want = kind == 2 ? 0 : len;
                        long r = kind switch
                        {
                            0 => StressIo.PWrite(fd, buf, len, off),
                            1 => StressIo.PRead(fd, buf, len, off),
                            _ => StressIo.Fsync(fd),
                        };
                        if (r == want) { Interlocked.Increment(ref ok); continue; }
                        if (r == -Errno.EIO && !stop.IsSet) { Interlocked.Increment(ref injected); continue; }
                        // After SIGTERM the device goes away: any failure ends the thread. Before it, only EIO may happen.
                        ended[me] = (stop.IsSet ? "" : "before SIGTERM: ") + StressIo.Describe(r, (int)want);
                        return;
                    }
                }
                finally { Libc.Close(fd); }
            }));
        }
        StressKernel.WaitUntil(() => Interlocked.Read(ref injected) > 200 && Interlocked.Read(ref ok) > 200 || Array.Exists(ended, e => e != null), 60_000);
        Assert.True(Array.TrueForAll(ended, e => e == null), dev + ": a thread failed before SIGTERM: " + string.Join(", ", ended));
        Assert.True(injected > 0 && ok > 0, dev + ": no I/O happened (" + ok + " ok, " + injected + " injected)");
        stop.Set();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        int code = s.Stop(timeoutMs: 30_000);
        Assert.True(code == 0, "serve exit " + code + "\n" + s.Stderr);
        StressThreads.AssertAllEnd(threads, TimeSpan.FromSeconds(30), dev + ": I/O threads after the server exited", Environment.ProcessId);
        output.WriteLine(dev + ": " + ok + " ok, " + injected + " injected failures before SIGTERM; server exited in " + sw.ElapsedMilliseconds +
            " ms; threads ended by: " + string.Join(", ", ended) + "\n" + s.Stderr);
        AssertNoDevices();
        Directory.Delete(dir, true);
    }
}
