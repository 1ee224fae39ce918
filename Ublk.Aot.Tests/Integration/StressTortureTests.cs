using System;
using System.Collections.Generic;
using System.IO;
using Xunit;
using Xunit.Abstractions;
using static Ublk.Aot.Tests.Integration.IntegrationEnv;

namespace Ublk.Aot.Tests.Integration;

/// <summary>
/// Torture: many threads, each owning a disjoint region of one device served by `serve` with several queues, doing
/// random O_DIRECT writes, reads, zero-outs, discards and fsyncs against an in-memory shadow, with periodic full
/// re-verifies. CI runs UBLK_TORTURE_DURATION=25s per backend; soak with e.g. UBLK_TORTURE_DURATION=30m.
/// </summary>
[Collection(UblkCollection.Name), Trait("Category", "Integration")]
public sealed class StressTortureTests(ITestOutputHelper output)
{
    private const long MiB = 1 << 20;

    /// <summary>The copy rows run the full duration; the other io modes a short run each (half of it).</summary>
    [Theory]
    [InlineData("mem", 512, "copy")]
    [InlineData("file", 4096, "copy")]
    [InlineData("mem", 512, "user-copy")]
    [InlineData("file", 512, "user-copy")]
    [InlineData("file", 4096, "zero-copy")]
    [InlineData("file", 512, "auto-buf-reg")]
    public void Torture_random_io_matches_the_shadow(string kind, int blockSize, string mode)
    {
        if (!IoModeTests.ServableOrRefused(mode, "null:1G")) return; // refusal asserted on this kernel
        TimeSpan duration = StressKnobs.Duration("UBLK_TORTURE_DURATION", TimeSpan.FromSeconds(25));
        if (mode != "copy") duration /= 2;
        int seed = StressKnobs.Seed();
        const long size = 128 * MiB;
        const int workers = 8;
        string dir = TempDir("torture-" + kind);
        string img = Path.Combine(dir, "torture.img");
        File.Delete(img);
        string spec = kind == "mem" ? "mem:128M" : "file:" + img + ",size=128M";
        var workload = new StressWorkload
        {
            Align = blockSize,
            MaxLength = 1024 * 1024,           // larger than --max-io: the block layer splits these
            SmallMax = 32 * 1024,
            WritePercent = 45,
            ZeroOutPercent = 3,
            DiscardPercent = 2,
            FsyncPercent = 2,
            Duration = duration,
            VerifyEvery = TimeSpan.FromSeconds(Math.Max(5, duration.TotalSeconds / 4)),
        };

        using (ServerProcess s = ServerProcess.Start("--backend " + spec + " --queues 4 --depth 64 --max-io 256K --block-size " + blockSize + " --io-mode " + mode + " --stats"))
        {
            StressWorker[] ws = RunToEnd(s, workers, size, workload, seed, _ => null);
            StopCleanly(s);
            Assert.True(s.Stderr.Contains("stats io_mode=" + mode), "the server did not serve in " + mode + ":\n" + s.Stderr);
            Assert.True(s.StatSum("flushes") > 0 || kind == "mem", "no FLUSH reached the file backend:\n" + s.Stderr);
            Assert.True(s.StatSum("discards") > 0 && s.StatSum("write_zeroes") > 0, "discards/zero-outs did not reach the server:\n" + s.Stderr);

            // The file backend maps device offsets 1:1 onto the backing file: the file must equal the shadows.
            if (kind == "file") AssertEqualsShadows(img, ws, "backing file after exit, seed " + seed, img + " (behind " + s.DevicePath + ")");
        }
        AssertNoDevices();
        Directory.Delete(dir, true);
    }

    /// <summary>
    /// The torture workload on a recoverable file device whose server is SIGKILLed at random moments and recovered
    /// (`recover ID`) while the workers keep their O_DIRECT fds: no request may fail (REISSUE) and every block must match
    /// the shadow, through the device and in the backing file. CI runs 3 cycles; scripts/recovery-soak.sh runs 100
    /// (UBLK_TORTURE_RECOVER_CYCLES).
    /// </summary>
    [Fact]
    public void Torture_across_kill_and_recover_matches_the_shadow()
    {
        int cycles = StressKnobs.Count("UBLK_TORTURE_RECOVER_CYCLES", 3);
        int seed = StressKnobs.Seed();
        const long size = 64 * MiB;
        const int workers = 6;
        string dir = TempDir("torture-recover");
        string img = Path.Combine(dir, "torture.img");
        File.Delete(img);
        var workload = new StressWorkload
        {
            Align = 4096,
            MaxLength = 512 * 1024,
            SmallMax = 32 * 1024,
            WritePercent = 50,
            ZeroOutPercent = 3,
            DiscardPercent = 2,
            FsyncPercent = 3,
            VerifyEvery = TimeSpan.FromSeconds(20),
        };
        ServerProcess s = ServerProcess.Start("--backend file:" + img + ",size=64M --recovery reissue --queues 2 --depth 32 --max-io 256K --block-size 4096");
        int id = s.Id;
        string dev = s.DevicePath;
        var ws = new StressWorker[workers];
        var rnd = new Random(seed);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            for (int i = 0; i < workers; i++)
            {
                ws[i] = new StressWorker(i, dev, i * (size / workers) / 4096 * 4096, size / workers / 4096 * 4096, workload, seed + i);
                ws[i].Start();
            }
            for (int c = 0; c < cycles; c++)
            {
                System.Threading.Thread.Sleep(300 + rnd.Next(1500));
                foreach (StressWorker w in ws) Assert.True(w.Failure == null, "cycle " + c + ": " + w.Failure);
                RecoveryTests.KillUntilQuiesced(s, id);
                s = RecoveryTests.Recover(s, id);
                if ((c + 1) % 10 == 0) output.WriteLine("cycle " + (c + 1) + " of " + cycles + " after " + sw.Elapsed.TotalSeconds.ToString("F0") + " s");
            }
            System.Threading.Thread.Sleep(1000);
            foreach (StressWorker w in ws) w.RequestStop();
            StressThreads.AssertAllEnd(Array.ConvertAll(ws, w => w.Thread), TimeSpan.FromMinutes(5), dev + ": torture workers", s.Pid);
            foreach (StressWorker w in ws) output.WriteLine(w.Summary);
            foreach (StressWorker w in ws) Assert.True(w.Failure == null, w.Failure);
            foreach (StressWorker w in ws) Assert.True(w.Writes > 0 && w.Reads > 0, "a worker did no real work: " + w.Summary);
            output.WriteLine(cycles + " kill/recover cycles in " + sw.Elapsed.TotalSeconds.ToString("F0") + " s, seed " + seed);
            Assert.Equal(0, s.Stop());
            AssertEqualsShadows(img, ws, "backing file after " + cycles + " recoveries, seed " + seed, img);
        }
        finally
        {
            foreach (StressWorker? w in ws) w?.RequestStop();
            foreach (StressWorker? w in ws) w?.Join(TimeSpan.FromSeconds(30));
            s.Dispose();
            UblkAot("del " + id);
        }
        AssertNoDevices();
        Directory.Delete(dir, true);
    }

    /// <summary>
    /// The torture workload on a qcow2 image (one queue: the backend's limit) that starts empty or over a qcow2
    /// backing image qemu-io filled with a pattern: every block read back matches the shadow while clusters are
    /// allocated, copied on write, zero-flagged and unallocated under the workers; after a clean stop `qemu-img check`
    /// finds no errors and no leaks, and `qemu-img convert -O raw` equals the shadows.
    /// </summary>
    [Theory]
    [InlineData("compat=1.1,cluster_size=65536", 512, false)]
    [InlineData("compat=1.1,cluster_size=65536,extended_l2=on", 4096, true)]
    [InlineData("compat=0.10,cluster_size=4096", 4096, false)]
    public void Torture_on_qcow2_matches_the_shadow_and_qemu_img_check_is_clean(string options, int blockSize, bool backing)
    {
        TimeSpan duration = StressKnobs.Duration("UBLK_TORTURE_DURATION", TimeSpan.FromSeconds(25)) / 2;
        int seed = StressKnobs.Seed();
        const long size = 128 * MiB;
        const long filled = 40 * MiB; // what the backing image holds (0x5a), the rest of it reads as zeros
        const int workers = 8;
        string dir = TempDir("torture-qcow2");
        string img = Path.Combine(dir, "disk.qcow2");
        if (backing)
        {
            Sh("cd " + dir + " && qemu-img create -q -f qcow2 base.qcow2 128M && qemu-io -f qcow2 base.qcow2 -c 'write -P 0x5a 0 40M' >/dev/null");
            Sh("cd " + dir + " && qemu-img create -q -f qcow2 -o " + options + " -b base.qcow2 -F qcow2 disk.qcow2 128M");
        }
        else Sh("qemu-img create -q -f qcow2 -o " + options + " " + img + " 128M");
        var workload = new StressWorkload
        {
            Align = blockSize,
            MaxLength = 1024 * 1024,
            SmallMax = 32 * 1024,
            WritePercent = 45,
            ZeroOutPercent = 3,
            DiscardPercent = 2,
            FsyncPercent = 2,
            Duration = duration,
            VerifyEvery = TimeSpan.FromSeconds(Math.Max(4, duration.TotalSeconds / 3)),
        };
        StressWorker[] ws;
        using (ServerProcess s = ServerProcess.Start("--backend qcow2:" + img + " --queues 1 --depth 64 --max-io 256K --block-size " + blockSize + " --stats"))
        {
            ws = RunToEnd(s, workers, size, workload, seed, start =>
            {
                byte[] initial = new byte[size / workers];
                if (backing && start < filled) initial.AsSpan(0, (int)Math.Min(initial.Length, filled - start)).Fill(0x5a);
                return initial;
            });
            StopCleanly(s);
            Assert.True(s.StatSum("flushes") > 0 && s.StatSum("discards") > 0 && s.StatSum("write_zeroes") > 0, "flush/discard/zero-out did not reach the server:\n" + s.Stderr);
            // Metadata memory is amortised, not per request: L2 cache slots and grow-once lists, allocated on first
            // use (a 128M image needs at most 64 L2 tables of 4 KiB, or one of 64/128 KiB).
            long requests = s.StatSum("reads") + s.StatSum("writes"), allocated = s.StatSum("alloc_bytes");
            output.WriteLine("queue thread: " + allocated + " bytes allocated over " + requests + " reads and writes");
            Assert.True(requests >= 1000 && allocated <= 1 << 20, "the qcow2 queue thread allocated " + allocated + " bytes over " + requests + " requests (bound 1 MiB, at least 1000 requests):\n" + s.Stderr);
        }
        AssertNoDevices();
        Result check = Sh("qemu-img check " + img, check: false);
        output.WriteLine(check.Out);
        Assert.True(check.Code == 0 && check.Out.Contains("No errors were found"), "qemu-img check after the torture, seed " + seed + ":\n" + check);
        string raw = Path.Combine(dir, "disk.raw");
        Sh("qemu-img convert -O raw " + img + " " + raw);
        AssertEqualsShadows(raw, ws, "qemu-img convert after the torture, seed " + seed, raw);
        Directory.Delete(dir, true);
    }

    /// <summary>
    /// Runs <paramref name="workers"/> workers on equal regions of the device until the workload's duration ends;
    /// each must end without a failure and have written, read and verified. <paramref name="initial"/>: what a
    /// region starting at the given offset holds before (null: zeros).
    /// </summary>
    private StressWorker[] RunToEnd(ServerProcess s, int workers, long size, StressWorkload workload, int seed, Func<long, byte[]?> initial)
    {
        var ws = new StressWorker[workers];
        for (int i = 0; i < workers; i++)
        {
            long start = i * (size / workers);
            ws[i] = new StressWorker(i, s.DevicePath, start, size / workers, workload, seed + i, initial(start));
            ws[i].Start();
        }
        StressThreads.AssertAllEnd(Array.ConvertAll(ws, w => w.Thread), workload.Duration + TimeSpan.FromMinutes(5), s.DevicePath + ": torture workers", s.Pid);
        foreach (StressWorker w in ws) output.WriteLine(w.Summary);
        foreach (StressWorker w in ws) Assert.True(w.Failure == null, w.Failure);
        foreach (StressWorker w in ws) Assert.True(w.Writes > 0 && w.Reads > 0 && w.Verifies > 0, "a worker did no real work: " + w.Summary);
        return ws;
    }

    /// <summary>SIGTERM: exit 0 and no failed request counted.</summary>
    private void StopCleanly(ServerProcess s)
    {
        int code = s.Stop();
        Assert.True(code == 0, "serve exit " + code + "\n" + s.Stderr);
        output.WriteLine(s.Stderr);
        Assert.True(s.StatSum("errors") == 0, "the server counted failed requests:\n" + s.Stderr);
    }

    /// <summary>A file that maps device offsets 1:1 (a raw backing file, qemu-img's raw output) must hold every worker's shadow.</summary>
    private static void AssertEqualsShadows(string path, StressWorker[] ws, string what, string name)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        byte[] raw = new byte[4 * MiB];
        foreach (StressWorker w in ws)
        {
            for (long off = 0; off < w.Shadow.Length; off += raw.Length)
            {
                int n = (int)Math.Min(raw.Length, w.Shadow.Length - off);
                f.Position = w.RegionStart + off;
                f.ReadExactly(raw, 0, n);
                ReadOnlySpan<byte> expect = w.Shadow.AsSpan((int)off, n);
                Assert.True(expect.SequenceEqual(raw.AsSpan(0, n)), what + ": " + StressWorker.MismatchMessage(name, w.RegionStart + off, expect, raw.AsSpan(0, n)));
            }
        }
    }
}
