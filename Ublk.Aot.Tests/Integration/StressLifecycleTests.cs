using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Threading;
using Ublk.Aot.Interop;
using Ublk.Aot.Ublk;
using Xunit;
using Xunit.Abstractions;
using static Ublk.Aot.Tests.Integration.IntegrationEnv;

namespace Ublk.Aot.Tests.Integration;

/// <summary>
/// Lifecycle under stress: start/stop churn (CLI and library), I/O racing the stop, concurrent stops, and a stop while
/// a user holds /dev/ublkbN open. UBLK_CHURN_CYCLES and UBLK_STRESS_SCALE lengthen them for a soak.
/// </summary>
[Collection(UblkCollection.Name), Trait("Category", "Integration")]
public sealed class StressLifecycleTests(ITestOutputHelper output)
{
    private const long MiB = 1 << 20;

    /// <summary>serve → small I/O → SIGTERM, again and again: each exits 0 and takes its device along.</summary>
    [Fact]
    public void Churn_serve_io_sigterm_leaves_no_device()
    {
        Require();
        AssertNoDevices();
        int cycles = StressKnobs.Count("UBLK_CHURN_CYCLES", 20);
        string dir = TempDir("churn");
        string img = Path.Combine(dir, "churn.img");
        File.Delete(img);
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < cycles; i++)
        {
            string spec = i % 2 == 0 ? "mem:32M" : "file:" + img + ",size=32M";
            using ServerProcess s = ServerProcess.Start("--backend " + spec + " --queues " + (1 + i % 4));
            StressIo.RoundTrip(s.DevicePath, i);
            int code = s.Stop();
            Assert.True(code == 0, "cycle " + i + ": serve exit " + code + "\n" + s.Stderr);
            Assert.True(StressKernel.WaitGone((uint)s.Id, 10_000), "cycle " + i + ": ublk device " + s.Id + " still there after serve exited");
            Assert.False(File.Exists(s.DevicePath), "cycle " + i + ": " + s.DevicePath + " still there after serve exited");
        }
        output.WriteLine(cycles + " serve cycles in " + sw.ElapsedMilliseconds + " ms");
        AssertNoDevices();
        Directory.Delete(dir, true);
    }

    /// <summary>
    /// The library in this process: create → I/O → dispose, many times over (mem and file backends, 1–2 queues);
    /// afterwards the process holds no more fds, ublk/io_uring mappings, queue threads or address space than before.
    /// </summary>
    [Fact]
    public void Churn_in_process_leaks_no_fds_mappings_or_threads()
    {
        Require();
        AssertNoDevices();
        int cycles = 2 * StressKnobs.Count("UBLK_CHURN_CYCLES", 20);
        string dir = TempDir("churn-lib");
        string img = Path.Combine(dir, "churn.img");
        File.Delete(img);
        using var ctrl = new UblkControl();
        void Cycle(int i)
        {
            string spec = i % 2 == 0 ? "mem:16M" : "file:" + img + ",size=16M";
            var dev = StressLibDevice.Create(ctrl, spec, new DeviceOptions { Queues = 1 + i % 2, Depth = 32 });
            uint id = dev.Id;
            try { StressIo.RoundTrip(dev.Path, i); }
            finally { dev.Dispose(); }
            Assert.True(StressKernel.WaitGone(id, 10_000), "cycle " + i + ": ublk device " + id + " still there after Dispose");
        }
        Cycle(0); // warm-up: JIT, lazy statics, the runtime's own first-use fds
        Cycle(1);
        GC.Collect();
        GC.WaitForPendingFinalizers();
        StressProcSnapshot before = StressProcSnapshot.Take();
        var sw = Stopwatch.StartNew();
        for (int i = 2; i < cycles + 2; i++) Cycle(i);
        long ms = sw.ElapsedMilliseconds;
        GC.Collect();
        GC.WaitForPendingFinalizers();
        StressKernel.WaitUntil(() => StressProcSnapshot.Take().QueueThreads().Count == 0, 5_000);
        StressProcSnapshot after = StressProcSnapshot.Take();
        output.WriteLine(cycles + " in-process cycles in " + ms + " ms; fds " + before.Fds.Count + " -> " + after.Fds.Count + ", maps " +
            before.Maps.Length + " -> " + after.Maps.Length + ", threads " + before.Threads.Count + " -> " + after.Threads.Count +
            ", VmSize " + before.VmSizeKb + " -> " + after.VmSizeKb + " KiB");

        Assert.True(after.QueueThreads().Count == 0, "queue threads left: " + string.Join(", ", after.QueueThreads()));
        Assert.True(before.UblkFds().SequenceEqual(after.UblkFds()),
            "ublk/io_uring/eventfd fds leaked over " + cycles + " cycles:\nbefore: " + string.Join("; ", before.UblkFds()) + "\nafter: " + string.Join("; ", after.UblkFds()));
        Assert.True(after.UblkMaps().Count == before.UblkMaps().Count,
            "ublk/io_uring mappings leaked over " + cycles + " cycles:\n" + string.Join("\n", after.UblkMaps().Except(before.UblkMaps())));
        var newFds = after.Fds.Where(kv => !before.Fds.TryGetValue(kv.Key, out string? t) || t != kv.Value).Select(kv => kv.Key + " -> " + kv.Value).ToList();
        Assert.True(newFds.Count <= 2, "fds opened over " + cycles + " cycles and not closed: " + string.Join("; ", newFds));
        Assert.True(after.Threads.Count - before.Threads.Count < 4, "threads grew over " + cycles + " cycles: " + string.Join(", ", after.Threads.Except(before.Threads)));
        // One cycle maps at least the store (16 MiB) and a queue's buffers (32 x 512 KiB): a per-cycle leak shows at once.
        Assert.True(after.VmSizeKb - before.VmSizeKb < 16 * 1024, "address space grew by " + (after.VmSizeKb - before.VmSizeKb) + " KiB over " + cycles + " cycles");
        AssertNoDevices();
        Directory.Delete(dir, true);
    }

    /// <summary>Readers and writers keep going while serve gets SIGTERM: serve exits 0, every call returns (data or an error).</summary>
    [Theory]
    [InlineData("mem")]
    [InlineData("file")]
    public void Io_while_serve_stops_every_call_returns(string kind)
    {
        int seed = StressKnobs.Seed();
        string dir = TempDir("iostop-" + kind);
        string img = Path.Combine(dir, "s.img");
        File.Delete(img);
        string spec = kind == "mem" ? "mem:64M" : "file:" + img + ",size=64M";
        using ServerProcess s = ServerProcess.Start("--backend " + spec + " --queues 4 --depth 32 --stats");
        StressWorker[] ws = StartWorkers(s.DevicePath, 6, 8 * MiB, seed);
        Thread.Sleep(StressKnobs.Duration("UBLK_STRESS_IO_DURATION", TimeSpan.FromSeconds(3)));
        foreach (StressWorker w in ws) Assert.True(w.Failure == null && w.EndedBy == null, "before SIGTERM: " + (w.Failure ?? w.EndedBy));

        var sw = Stopwatch.StartNew();
        int code = s.Stop(timeoutMs: 30_000);
        long exitMs = sw.ElapsedMilliseconds;
        Assert.True(code == 0, "serve exit " + code + " with I/O running\n" + s.Stderr);
        AssertWorkersEnded(ws, s.DevicePath, "serve exited " + exitMs + " ms after SIGTERM");
        Assert.True(s.StatSum("errors") == 0, "the server failed requests while stopping:\n" + s.Stderr);
        AssertNoDevices();
        Directory.Delete(dir, true);
    }

    /// <summary>The same against the library: Dispose() with I/O running returns, and so does every call.</summary>
    [Fact]
    public void Io_while_disposing_in_process_every_call_returns()
    {
        Require();
        int seed = StressKnobs.Seed();
        using var ctrl = new UblkControl();
        var dev = StressLibDevice.Create(ctrl, "mem:64M", new DeviceOptions { Queues = 2, Depth = 32 });
        uint id = dev.Id;
        StressWorker[] ws = StartWorkers(dev.Path, 4, 8 * MiB, seed);
        Thread.Sleep(StressKnobs.Duration("UBLK_STRESS_IO_DURATION", TimeSpan.FromSeconds(3)));
        foreach (StressWorker w in ws) Assert.True(w.Failure == null && w.EndedBy == null, "before Dispose: " + (w.Failure ?? w.EndedBy));

        var sw = Stopwatch.StartNew();
        Thread disposer = StressThreads.Start("dispose", dev.Dispose);
        StressThreads.AssertAllEnd([disposer], TimeSpan.FromSeconds(30), dev.Path + ": Dispose() with I/O running", Environment.ProcessId);
        AssertWorkersEnded(ws, dev.Path, "Dispose returned after " + sw.ElapsedMilliseconds + " ms");
        Assert.True(StressKernel.WaitGone(id, 10_000), "ublk device " + id + " still there after Dispose and the workers closed their fds");
    }

    /// <summary>Many threads Dispose() one device at once (with I/O running): all return, no exception, device gone.</summary>
    [Fact]
    public void Concurrent_dispose_of_one_device()
    {
        Require();
        int seed = StressKnobs.Seed();
        int rounds = StressKnobs.Count("UBLK_STRESS_ROUNDS", 3);
        using var ctrl = new UblkControl();
        for (int round = 0; round < rounds; round++)
        {
            var dev = StressLibDevice.Create(ctrl, "mem:32M", new DeviceOptions { Queues = 2, Depth = 16 });
            uint id = dev.Id;
            StressWorker[] ws = StartWorkers(dev.Path, 3, 4 * MiB, seed + round * 10);
            StressKernel.WaitUntil(() => ws.All(w => w.Ops > 10 || w.EndedBy != null || w.Failure != null), 30_000);

            const int disposers = 16;
            using var barrier = new Barrier(disposers);
            var errors = new Exception?[disposers];
            var threads = new Thread[disposers];
            for (int t = 0; t < disposers; t++)
            {
                int me = t;
                threads[t] = StressThreads.Start("dispose" + t, () =>
                {
                    barrier.SignalAndWait();
                    try { dev.Device.Dispose(); }
                    catch (Exception e) { errors[me] = e; }
                });
            }
            StressThreads.AssertAllEnd(threads, TimeSpan.FromSeconds(30), dev.Path + ": concurrent Dispose()", Environment.ProcessId);
            StressThreads.AssertNoErrors(errors, dev.Path + ": concurrent Dispose() threw");
            AssertWorkersEnded(ws, dev.Path, "round " + round);
            dev.Dispose(); // again: a no-op for the device, frees the store
            Assert.True(StressKernel.WaitGone(id, 10_000), "ublk device " + id + " still there after concurrent Dispose");
        }
    }

    /// <summary>Several serve processes get SIGTERM at the same moment: all exit 0, no device is left.</summary>
    [Fact]
    public void Concurrent_sigterm_of_several_servers()
    {
        Require();
        AssertNoDevices();
        int n = StressKnobs.Count("UBLK_STRESS_SERVERS", 6);
        var servers = new List<ServerProcess>();
        try
        {
            for (int i = 0; i < n; i++)
            {
                servers.Add(ServerProcess.Start("--backend mem:16M --queues " + (1 + i % 2)));
                StressIo.RoundTrip(servers[i].DevicePath, i);
            }
            foreach (ServerProcess s in servers) s.Signal(15);
            foreach (ServerProcess s in servers)
            {
                int code = s.Stop(sig: 0, timeoutMs: 60_000); // signal 0: no second SIGTERM (see the report on exit 143)
                Assert.True(code == 0, s.DevicePath + ": serve exit " + code + "\n" + s.Stderr);
            }
            AssertNoDevices();
        }
        finally
        {
            foreach (ServerProcess s in servers) s.Dispose();
        }
    }

    /// <summary>
    /// SIGTERM while another user keeps /dev/ublkbN open. Observed on 6.12, asserted: serve exits at once with 0
    /// (STOP_DEV does not wait for openers, and DEL_DEV_ASYNC does not either); /dev/ublkbN and
    /// /sys/class/ublk-char/ublkcN disappear right away; through the still-open fd a write fails with ENOSPC and a
    /// read returns 0 bytes (del_gendisk set the capacity to 0); the device's id stays taken (ADD_DEV with it
    /// fails with EEXIST) until the holder closes, and is free right after.
    /// </summary>
    [Fact]
    public void Stop_while_a_user_holds_the_device_open()
    {
        Require();
        const uint id = 77;
        Assert.False(StressKernel.CharDeviceExists(id), "ublk device " + id + " exists before the test");
        using ServerProcess s = ServerProcess.Start("--backend mem:32M --id " + id);
        string dev = s.DevicePath;
        var holder = new BlockDevice(dev);
        try
        {
            var data = new byte[8192];
            new Random(5).NextBytes(data);
            holder.Write(data, 0);

            var sw = Stopwatch.StartNew();
            int code = s.Stop(timeoutMs: 30_000);
            long ms = sw.ElapsedMilliseconds;
            Assert.True(code == 0, dev + " held open: serve exit " + code + "\n" + s.Stderr);
            Assert.True(ms < 15_000, dev + " held open: serve took " + ms + " ms to exit (DEL_DEV_ASYNC should not wait for the holder)");
            Assert.False(File.Exists(dev), dev + " still exists after serve exited (held open)");
            Assert.False(StressKernel.CharDeviceExists(id), "/sys/class/ublk-char/ublkc" + id + " still exists after serve exited (held open)");

            long w = holder.TryWrite(data, 0);
            long r = holder.TryRead(new byte[4096], 0);
            output.WriteLine(dev + " held open: serve exited in " + ms + " ms; then write via the held fd = " + StressIo.Describe(w, data.Length) +
                ", read = " + StressIo.Describe(r, 4096));
            Assert.True(w < 0, dev + ": a write through the held fd succeeded after the device was stopped: " + w);
            Assert.True(r == 0 || r < 0, dev + ": a read through the held fd returned data after the device was stopped: " + r);
            if (File.ReadAllText("/proc/sys/kernel/osrelease").StartsWith("6.12.", StringComparison.Ordinal))
            {
                Assert.True(w == -Errno.ENOSPC, dev + ": write via the held fd = " + StressIo.Describe(w, data.Length) + ", expected ENOSPC on 6.12");
                Assert.True(r == 0, dev + ": read via the held fd = " + StressIo.Describe(r, 4096) + ", expected 0 bytes on 6.12");
            }

            Result busy = UblkAot("serve --backend mem:16M --id " + id, 30_000);
            Assert.True(busy.Code == 2 && busy.Err.Contains("device id " + id + " is in use", StringComparison.Ordinal),
                "while " + dev + " is held, its id should still be taken: " + busy);
        }
        finally
        {
            holder.Dispose();
        }
        // Closing the last opener frees the id (retried briefly: udev may still be probing the dead disk).
        using var ctrl = new UblkControl();
        StressLibDevice? again = null;
        var wait = Stopwatch.StartNew();
        while (again == null)
        {
            try { again = StressLibDevice.Create(ctrl, "mem:16M", new DeviceOptions { Id = (int)id }); }
            catch (UblkException e) when (e.Errno == Errno.EEXIST && wait.ElapsedMilliseconds < 10_000) { Thread.Sleep(100); }
        }
        output.WriteLine("id " + id + " free again " + wait.ElapsedMilliseconds + " ms after the holder closed");
        try { StressIo.RoundTrip(again.Path, 1); }
        finally { again.Dispose(); }
        AssertNoDevices();
    }

    internal static StressWorker[] StartWorkers(string dev, int n, long region, int seed)
    {
        var workload = new StressWorkload { MaxLength = 128 * 1024, WritePercent = 50, FsyncPercent = 2, ErrorsEnd = true, FinalVerify = false };
        var ws = new StressWorker[n];
        for (int i = 0; i < n; i++)
        {
            ws[i] = new StressWorker(i, dev, i * region, region, workload, seed + i);
            ws[i].Start();
        }
        return ws;
    }

    /// <summary>Every worker ends within 30 s, without wrong data, ended by a failed call (the device went away).</summary>
    internal void AssertWorkersEnded(StressWorker[] ws, string dev, string context)
    {
        StressThreads.AssertAllEnd(ws.Select(w => w.Thread), TimeSpan.FromSeconds(30), dev + " (" + context + "): I/O calls", Environment.ProcessId);
        output.WriteLine(dev + ": " + context);
        foreach (StressWorker w in ws)
        {
            output.WriteLine("  " + w.Summary);
            Assert.True(w.Failure == null, w.Failure);
            Assert.True(w.EndedBy != null, w.Name + ": its calls kept succeeding after the device was stopped");
            Assert.True(w.Ops > 0, w.Name + ": no call succeeded before the stop");
        }
    }
}
