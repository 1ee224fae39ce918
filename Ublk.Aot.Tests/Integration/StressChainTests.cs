using System;
using System.Linq;
using Ublk.Aot.Ublk;
using Xunit;
using Xunit.Abstractions;
using static Ublk.Aot.Tests.Integration.IntegrationEnv;

namespace Ublk.Aot.Tests.Integration;

/// <summary>
/// Two ublk devices stacked in ONE process: a mem device at the bottom, and on top a file device whose backing file
/// is the bottom's /dev/ublkbN (opened O_DIRECT). Bytes written to the top must appear at the same offsets in the
/// bottom's RAM; both queue sets run side by side in this process, the top's I/O being served by the bottom's.
/// </summary>
[Collection(UblkCollection.Name), Trait("Category", "Integration")]
public sealed class StressChainTests(ITestOutputHelper output)
{
    private const long MiB = 1 << 20;

    [Fact]
    public void Chain_top_writes_land_in_the_bottom_store()
    {
        Require();
        int seed = StressKnobs.Seed();
        using var ctrl = new UblkControl();
        StressLibDevice bottom = StressLibDevice.Create(ctrl, "mem:64M", new DeviceOptions { Queues = 2, Depth = 32 });
        StressLibDevice? top = null;
        try
        {
            top = StressLibDevice.Create(ctrl, "file:" + bottom.Path + ",direct=on", new DeviceOptions { Queues = 2, Depth = 32 });
            Assert.Equal(64UL * (ulong)MiB, top.Device.Caps.Size);
            var topFile = ((global::Ublk.Aot.Backends.FileSpec)top.Spec).File;
            Assert.True(topFile.IsBlockDevice && topFile.Direct, "top's backing " + bottom.Path + " should be a block device opened O_DIRECT");

            // Single writes of many sizes (512-byte aligned offsets): each lands at its offset in the bottom's RAM and reads back through both devices.
            using (var topDev = new BlockDevice(top.Path))
            using (var bottomDev = new BlockDevice(bottom.Path))
            {
                var rnd = new Random(seed);
                for (int i = 0; i < 64; i++)
                {
                    int len = rnd.Next(1, 129) * 4096;
                    long off = rnd.NextInt64(0, (16 * MiB - len) / 512 + 1) * 512; // the first 16 MiB; the torture below owns the rest
                    var data = new byte[len];
                    rnd.NextBytes(data);
                    topDev.Write(data, off);
                    ReadOnlySpan<byte> raw = bottom.Store.Slice((ulong)off, len);
                    Assert.True(raw.SequenceEqual(data), "seed " + seed + ": " + StressWorker.MismatchMessage(bottom.Path + "'s mem store (under " + top.Path + ")", off, data, raw));
                    byte[] viaTop = topDev.Read(len, off);
                    Assert.True(viaTop.AsSpan().SequenceEqual(data), "seed " + seed + ": " + StressWorker.MismatchMessage(top.Path, off, data, viaTop));
                    byte[] viaBottom = bottomDev.Read(len, off);
                    Assert.True(viaBottom.AsSpan().SequenceEqual(data), "seed " + seed + ": " + StressWorker.MismatchMessage(bottom.Path, off, data, viaBottom));
                }
                // A discard on the top becomes a hole punched in the bottom block device: zeros in the bottom's RAM.
                int rc = StressIo.Discard(topDev.Fd, 8 * MiB, 2 * MiB);
                Assert.True(rc == 0, top.Path + ": BLKDISCARD(8 MiB, 2 MiB) = " + StressIo.Describe(rc, 0));
                ReadOnlySpan<byte> punched = bottom.Store.Slice(8UL * (ulong)MiB, (int)(2 * MiB));
                Assert.True(punched.IndexOfAnyExcept((byte)0) < 0,
                    "discard on " + top.Path + ": " + StressWorker.MismatchMessage(bottom.Path + "'s mem store", 8 * MiB, new byte[2 * MiB], punched));
                rc = StressIo.Fsync(topDev.Fd);
                Assert.True(rc == 0, top.Path + ": fdatasync = " + StressIo.Describe(rc, 0));
            }

            // Torture on the top for a few seconds; then the bottom's RAM must equal the workers' shadows.
            TimeSpan duration = StressKnobs.Duration("UBLK_STRESS_IO_DURATION", TimeSpan.FromSeconds(3)) * 2;
            var workload = new StressWorkload { MaxLength = 512 * 1024, WritePercent = 50, ZeroOutPercent = 3, FsyncPercent = 2, Duration = duration };
            var ws = new StressWorker[4];
            for (int i = 0; i < ws.Length; i++) { ws[i] = new StressWorker(i, top.Path, 16 * MiB + i * 8 * MiB, 8 * MiB, workload, seed + i); ws[i].Start(); }
            StressThreads.AssertAllEnd(ws.Select(w => w.Thread), duration + TimeSpan.FromMinutes(3), "chain workers on " + top.Path, Environment.ProcessId);
            foreach (StressWorker w in ws)
            {
                output.WriteLine(w.Summary);
                Assert.True(w.Failure == null, w.Failure);
                ReadOnlySpan<byte> raw = bottom.Store.Slice((ulong)w.RegionStart, w.Shadow.Length);
                Assert.True(raw.SequenceEqual(w.Shadow), StressWorker.MismatchMessage(bottom.Path + "'s mem store (under " + top.Path + ")", w.RegionStart, w.Shadow, raw));
            }

            QueueStats t = top.StatsSum(), b = bottom.StatsSum();
            output.WriteLine("top " + top.Path + ": " + t.Reads + " reads, " + t.Writes + " writes, " + t.Flushes + " flushes, " + t.Discards + " discards, " +
                t.WriteZeroes + " write-zeroes, " + t.BytesWritten + " bytes written; bottom " + bottom.Path + ": " + b.Reads + " reads, " + b.Writes + " writes, " +
                b.WriteZeroes + " write-zeroes, " + b.BytesWritten + " bytes written");
            Assert.True(t.Errors == 0 && b.Errors == 0, "failed requests: top " + t.Errors + ", bottom " + b.Errors);
            Assert.True(t.Flushes > 0 && t.Discards > 0, "top saw no flush/discard");
            // Bytes, not requests: the block layer may merge two of the top's adjacent O_DIRECT writes into one request
            // at the bottom (seen in CI: 872 top writes arrived as 871), so request counts can go either way.
            Assert.True(b.BytesWritten >= t.BytesWritten && b.WriteZeroes > 0,
                "the bottom did not serve the top's writes and hole punches: top wrote " + t.BytesWritten + " bytes, bottom " + b.BytesWritten +
                " bytes and " + b.WriteZeroes + " write-zeroes");

            uint topId = top.Id, bottomId = bottom.Id;
            top.Dispose();   // also closes the top's fds on the bottom device
            top = null;
            Assert.True(StressKernel.WaitGone(topId, 10_000), "top device " + topId + " still there after Dispose");
            bottom.Dispose();
            Assert.True(StressKernel.WaitGone(bottomId, 10_000), "bottom device " + bottomId + " still there after Dispose");
        }
        finally
        {
            top?.Dispose();
            bottom.Dispose();
        }
    }
}
