using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Linq;
using System.Threading;
using Ublk.Aot.Interop;
using Ublk.Aot.Ublk;
using Xunit;
using Xunit.Abstractions;
using static Ublk.Aot.Tests.Integration.IntegrationEnv;

namespace Ublk.Aot.Tests.Integration;

/// <summary>
/// Many devices at once, served by the library in this process (cheaper than a process each): more than the
/// module's default ublks_max of 64, each with its own writer, checked for cross-device bleed, then all stopped
/// in parallel while the writers still run. UBLK_STRESS_DEVICES (80) sets the count.
/// </summary>
[Collection(UblkCollection.Name), Trait("Category", "Integration")]
public sealed class StressManyDevicesTests(ITestOutputHelper output)
{
    private const int Region = 256 * 1024; // per device, written and verified

    [Fact]
    public void Many_devices_with_writers_stopped_in_parallel()
    {
        Require();
        AssertNoDevices();
        int n = StressKnobs.Count("UBLK_STRESS_DEVICES", 80);
        int seed = StressKnobs.Seed();
        int oldMax = StressKernel.UblksMax;
        const int creators = 4;
        var ctrls = new UblkControl[creators];
        var devs = new StressLibDevice?[n];
        var fds = new int[n];
        Array.Fill(fds, -1);
        var go = new ManualResetEventSlim(false);      // releases the phase-2 writers
        var stopNow = new ManualResetEventSlim(false); // releases the disposers
        try
        {
            StressKernel.UblksMax = Math.Max(oldMax, n + 16);
            for (int c = 0; c < creators; c++) ctrls[c] = new UblkControl();

            // Create from several threads, each with its own control fd: the kernel sees concurrent ADD/START_DEVs.
            var sw = Stopwatch.StartNew();
            var createErrors = new Exception?[creators];
            var threads = new List<Thread>();
            int ncpu = Environment.ProcessorCount;
            for (int c = 0; c < creators; c++)
            {
                int me = c;
                threads.Add(StressThreads.Start("create" + c, () =>
                {
                    try
                    {
                        for (int i = me; i < n; i += creators)
                            devs[i] = StressLibDevice.Create(ctrls[me], "mem:16M",
                                new DeviceOptions { Queues = 1, Depth = 16, MaxIoBytes = 64 * 1024, Cpus = [i % ncpu] });
                    }
                    catch (Exception e) { createErrors[me] = e; }
                }));
            }
            StressThreads.AssertAllEnd(threads, TimeSpan.FromMinutes(5), "creating " + n + " devices", Environment.ProcessId);
            StressThreads.AssertNoErrors(createErrors, "creating " + n + " devices");
            long createMs = sw.ElapsedMilliseconds;
            var phases = new List<string> { "create " + createMs + " ms" };
            void Phase(string name) { phases.Add(name + " " + sw.ElapsedMilliseconds + " ms"); sw.Restart(); }
            Assert.Equal(n, devs.Select(d => d!.Id).Distinct().Count());
            Assert.True(StressKernel.WaitUntil(() => devs.All(d => System.IO.File.Exists(d!.Path)), 30_000),
                "block nodes missing: " + string.Join(", ", devs.Where(d => !System.IO.File.Exists(d!.Path)).Select(d => d!.Path)));

            // With ublks_max at the current count, one more ADD_DEV: kernels that count every device refuse it with EACCES
            // (and the message must say why); Debian's 6.12.117 carries the later change that counts only
            // UBLK_F_UNPRIVILEGED_DEV devices, so root's ADD_DEV goes through there: either is accepted, the outcome is printed.
            StressKernel.UblksMax = n;
            string limit;
            try
            {
                StressLibDevice.Create(ctrls[0], "mem:16M", new DeviceOptions()).Dispose();
                limit = "ublks_max=" + n + " did not stop device " + (n + 1) + " (the limit counts only unprivileged devices on this kernel)";
            }
            catch (UblkException e) when (e.Errno == Errno.EACCES)
            {
                Assert.Contains("ublks_max", e.Message);
                limit = "ublks_max=" + n + " refused device " + (n + 1) + ": " + e.Message;
            }
            StressKernel.UblksMax = Math.Max(oldMax, n + 16);
            sw.Restart();

            // Phase 1: every device gets its own verified writer (a fixed number of calls: under emulation 80 devices
            // share a few slow vCPUs); afterwards each store holds its own writer's data only.
            int calls = StressKnobs.Count("UBLK_STRESS_DEVICE_OPS", 40);
            var verified = new StressWorkload { MaxLength = 32 * 1024, WritePercent = 60, MaxOps = calls };
            var ws = new StressWorker[n];
            for (int i = 0; i < n; i++)
            {
                fds[i] = StressIo.OpenDirect(devs[i]!.Path);
                Assert.True(fds[i] >= 0, "open " + devs[i]!.Path + ": " + Errno.Name(fds[i]));
            }
            for (int i = 0; i < n; i++) { ws[i] = new StressWorker(i, devs[i]!.Path, 0, Region, verified, seed + i, fd: fds[i]); ws[i].Start(); }
            StressThreads.AssertAllEnd(ws.Select(w => w.Thread), TimeSpan.FromMinutes(5), "writers on " + n + " devices", Environment.ProcessId);
            foreach (StressWorker w in ws) Assert.True(w.Failure == null, w.Failure);
            long ops = ws.Sum(w => w.Ops);
            Phase("verified writers");
            for (int i = 0; i < n; i++)
            {
                ReadOnlySpan<byte> store = devs[i]!.Store.Slice(0, Region);
                Assert.True(store.SequenceEqual(ws[i].Shadow),
                    "cross-device check: " + StressWorker.MismatchMessage(devs[i]!.Path + "'s mem store", 0, ws[i].Shadow, store));
                Assert.True(ws[i].Writes > 0, ws[i].Summary);
            }

            // Phase 2: writers running again, then every device stopped at once, each by its own thread. All threads are
            // started before any I/O and then released by gates: starting threads is slow once I/O saturates the vCPUs.
            StressWorker[] racing = new StressWorker[n];
            var stopping = new StressWorkload { MaxLength = 32 * 1024, WritePercent = 60, ErrorsEnd = true, FinalVerify = false };
            for (int i = 0; i < n; i++) { racing[i] = new StressWorker(i, devs[i]!.Path, 0, Region, stopping, seed + 1000 + i, ws[i].Shadow, fds[i]); racing[i].Start(go); }
            var disposeMs = new long[n];
            var disposeErrors = new Exception?[n];
            var disposers = new Thread[n];
            for (int i = 0; i < n; i++)
            {
                int me = i;
                disposers[i] = StressThreads.Start("dispose" + i, () =>
                {
                    stopNow.Wait();
                    var t = Stopwatch.StartNew();
                    try { devs[me]!.Device.Dispose(); } catch (Exception e) { disposeErrors[me] = e; }
                    disposeMs[me] = t.ElapsedMilliseconds;
                });
            }
            Phase("threads started");
            go.Set();
            StressKernel.WaitUntil(() => racing.Count(w => w.Ops > 0 || w.EndedBy != null || w.Failure != null) >= n * 3 / 4, 30_000);
            Phase("writers warm-up");
            stopNow.Set();
            // A slow stop is worth a look at where the threads wait, even when it ends in time.
            if (StressThreads.JoinAll(disposers, TimeSpan.FromSeconds(60)).Count > 0)
                output.WriteLine("stop still running after 60 s; kernel stacks:\n" + StressKernel.Diagnostics(Environment.ProcessId));
            StressThreads.AssertAllEnd(disposers, TimeSpan.FromMinutes(3), "parallel stop of " + n + " devices", Environment.ProcessId);
            long stopMs = sw.ElapsedMilliseconds;
            Phase("parallel stop (Dispose " + disposeMs.Min() + ".." + disposeMs.Max() + " ms, mean " + (long)disposeMs.Average() + ")");
            StressThreads.AssertNoErrors(disposeErrors, "parallel stop of " + n + " devices");
            StressThreads.AssertAllEnd(racing.Select(w => w.Thread), TimeSpan.FromSeconds(60), "writers after their devices stopped", Environment.ProcessId);
            foreach (StressWorker w in racing) Assert.True(w.Failure == null, w.Failure);
            Phase("writers end");
            foreach (int fd in fds) Libc.Close(fd);
            Array.Fill(fds, -1);
            foreach (StressLibDevice? d in devs) d!.Spec.Dispose();
            AssertNoDevices(30_000);
            Phase("devices gone");
            output.WriteLine(n + " devices: created in " + createMs + " ms, " + ops + " verified ops, all stopped in parallel in " + stopMs + " ms; " + limit + "\nphases: " + string.Join(", ", phases));
            Array.Clear(devs);
        }
        finally
        {
            go.Set();
            stopNow.Set(); // on a failure, parked threads must not stay parked
            foreach (int fd in fds) if (fd >= 0) Libc.Close(fd);
            foreach (StressLibDevice? d in devs) d?.Dispose();
            foreach (UblkControl? c in ctrls) c?.Dispose();
            if (KernelDevices().Length > 0) UblkAot("del --all", 120_000);
            StressKernel.UblksMax = oldMax;
        }
    }
}
