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

    [Theory]
    [InlineData("mem", 512)]
    [InlineData("file", 4096)]
    public void Torture_random_io_matches_the_shadow(string kind, int blockSize)
    {
        TimeSpan duration = StressKnobs.Duration("UBLK_TORTURE_DURATION", TimeSpan.FromSeconds(25));
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

        using (ServerProcess s = ServerProcess.Start("--backend " + spec + " --queues 4 --depth 64 --max-io 256K --block-size " + blockSize + " --stats"))
        {
            var ws = new StressWorker[workers];
            for (int i = 0; i < workers; i++)
            {
                ws[i] = new StressWorker(i, s.DevicePath, i * (size / workers), size / workers, workload, seed + i);
                ws[i].Start();
            }
            StressThreads.AssertAllEnd(Array.ConvertAll(ws, w => w.Thread), duration + TimeSpan.FromMinutes(5), s.DevicePath + ": torture workers", s.Pid);
            foreach (StressWorker w in ws) output.WriteLine(w.Summary);
            foreach (StressWorker w in ws) Assert.True(w.Failure == null, w.Failure);
            foreach (StressWorker w in ws) Assert.True(w.Writes > 0 && w.Reads > 0 && w.Verifies > 0, "a worker did no real work: " + w.Summary);

            int code = s.Stop();
            Assert.True(code == 0, "serve exit " + code + "\n" + s.Stderr);
            output.WriteLine(s.Stderr);
            Assert.True(s.StatSum("errors") == 0, "the server counted failed requests:\n" + s.Stderr);
            Assert.True(s.StatSum("flushes") > 0 || kind == "mem", "no FLUSH reached the file backend:\n" + s.Stderr);
            Assert.True(s.StatSum("discards") > 0 && s.StatSum("write_zeroes") > 0, "discards/zero-outs did not reach the server:\n" + s.Stderr);

            // The file backend maps device offsets 1:1 onto the backing file: the file must equal the shadows.
            if (kind == "file")
            {
                using var f = new FileStream(img, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
                byte[] raw = new byte[4 * MiB];
                foreach (StressWorker w in ws)
                {
                    for (long off = 0; off < w.Shadow.Length; off += raw.Length)
                    {
                        f.Position = w.RegionStart + off;
                        f.ReadExactly(raw);
                        ReadOnlySpan<byte> expect = w.Shadow.AsSpan((int)off, raw.Length);
                        Assert.True(expect.SequenceEqual(raw), "backing file after exit, seed " + seed + ": " +
                            StressWorker.MismatchMessage(img + " (behind " + s.DevicePath + ")", w.RegionStart + off, expect, raw));
                    }
                }
            }
        }
        AssertNoDevices();
        Directory.Delete(dir, true);
    }
}
