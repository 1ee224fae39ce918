using System;
using System.IO;
using System.Text.Json;
using Xunit;
using Xunit.Abstractions;
using static Ublk.Aot.Tests.Integration.IntegrationEnv;

namespace Ublk.Aot.Tests.Integration;

/// <summary>
/// SIGKILL of `serve` in the middle of I/O: no cleanup of ours runs, the kernel alone must cope.
///
/// What Debian's 6.12 kernel does (observed, and asserted below): when the server dies, its io_uring is torn down and
/// ublk_drv cancels the parked FETCH commands; it then aborts the requests in flight, completing them with EIO, and
/// stops the device itself: del_gendisk removes /dev/ublkbN within a second, and later I/O through a still-open fd
/// fails (EIO, or ENOSPC/0 bytes once the capacity is 0). No task is left in D state. The ublk device itself is NOT
/// deleted: /dev/ublkcN and /sys/class/ublk-char/ublkcN stay, GET_DEV_INFO reports state DEAD (pid -1), and its id
/// stays taken — nothing in the kernel sends DEL_DEV for a dead server (this is what makes UBLK_F_USER_RECOVERY
/// possible). `ublk-aot del ID` or `del --all` (STOP_DEV, DEL_DEV_ASYNC) removes it at once. A new server can start
/// right away, the dead one still present: it simply gets another id.
/// </summary>
[Collection(UblkCollection.Name), Trait("Category", "Integration")]
public sealed class StressSigkillTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("mem", "del ID")]
    [InlineData("file", "del --all")]
    public void Sigkill_mid_io_leaves_a_dead_device_that_del_removes(string kind, string cleanup)
    {
        Require();
        AssertNoDevices();
        int seed = StressKnobs.Seed();
        string dir = TempDir("sigkill-" + kind);
        string img = Path.Combine(dir, "k.img");
        File.Delete(img);
        const long size = 128L << 20;
        string spec = kind == "mem" ? "mem:128M" : "file:" + img + ",size=128M";
        ServerProcess s = ServerProcess.Start("--backend " + spec + " --queues 4 --depth 32");
        try
        {
            string dev = s.DevicePath;
            uint id = (uint)s.Id;
            var workload = new StressWorkload { MaxLength = 256 * 1024, WritePercent = 60, FsyncPercent = 2, ErrorsEnd = true, FinalVerify = false };
            var ws = new StressWorker[6];
            for (int i = 0; i < ws.Length; i++)
            {
                ws[i] = new StressWorker(i, dev, i * (size / ws.Length) / 4096 * 4096, 8L << 20, workload, seed + i);
                ws[i].Start();
            }
            // Let I/O get going on every worker, then kill.
            StressKernel.WaitUntil(() => Array.TrueForAll(ws, w => w.Ops > 20 || w.EndedBy != null || w.Failure != null), 60_000);
            foreach (StressWorker w in ws) Assert.True(w.Failure == null && w.EndedBy == null, "before the kill: " + (w.Failure ?? w.EndedBy));
            int code = s.Stop(sig: 9, timeoutMs: 30_000);
            Assert.Equal(128 + 9, code);

            // Every request in flight completes (with an error) and every later call fails: no worker hangs.
            StressThreads.AssertAllEnd(Array.ConvertAll(ws, w => w.Thread), TimeSpan.FromSeconds(60), dev + ": I/O after SIGKILL of the server", Environment.ProcessId);
            foreach (StressWorker w in ws)
            {
                output.WriteLine(w.Summary);
                Assert.True(w.Failure == null, w.Failure);
                Assert.True(w.EndedBy != null, w.Name + ": still succeeding after its server was killed");
            }
            StressKernel.AssertNoDState("after SIGKILL of serve on " + dev);

            // The kernel stopped the disk but kept the ublk device, DEAD, until someone deletes it.
            Assert.True(StressKernel.WaitUntil(() => !File.Exists(dev), 10_000), dev + " still exists 10 s after SIGKILL of its server");
            Assert.True(StressKernel.CharDeviceExists(id) && File.Exists("/dev/ublkc" + id),
                "ublk device " + id + " vanished after SIGKILL (expected: kept in state DEAD until DEL_DEV)");
            JsonElement info = ListEntry(id);
            Assert.True(info.GetProperty("state").GetString() == "DEAD", "device " + id + " after SIGKILL: " + info);
            Assert.Equal("-", info.GetProperty("block").GetString());

            // A fresh server works at once, next to the dead device.
            using (ServerProcess fresh = ServerProcess.Start("--backend mem:16M"))
            {
                Assert.NotEqual(s.Id, fresh.Id);
                StressIo.RoundTrip(fresh.DevicePath, 3);
                Assert.Equal(0, fresh.Stop());
            }

            Result del = UblkAot(cleanup.Replace("ID", id.ToString(), StringComparison.Ordinal), 60_000);
            Assert.True(del.Code == 0, cleanup + ": " + del);
            Assert.True(StressKernel.WaitGone(id, 10_000), "ublk device " + id + " still there after " + cleanup);
            AssertNoDevices();

            // The id is free again: a server can take exactly that id.
            using (ServerProcess again = ServerProcess.Start("--backend mem:16M --id " + id))
            {
                StressIo.RoundTrip(again.DevicePath, 4);
                Assert.Equal(0, again.Stop());
            }
            AssertNoDevices();
        }
        finally
        {
            s.Dispose();
        }
        Directory.Delete(dir, true);
    }

    private static JsonElement ListEntry(uint id)
    {
        Result l = UblkAot("list --json");
        Assert.True(l.Code == 0, l.ToString());
        using JsonDocument doc = JsonDocument.Parse(l.Out);
        foreach (JsonElement e in doc.RootElement.EnumerateArray())
            if (e.GetProperty("id").GetUInt32() == id) return e.Clone();
        Assert.Fail("device " + id + " is not listed: " + l.Out);
        return default;
    }
}
