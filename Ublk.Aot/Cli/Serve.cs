using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Runtime.InteropServices;
using System.Threading;
using Ublk.Aot.Abi;
using Ublk.Aot.Backends;
using Ublk.Aot.Interop;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Cli;

/// <summary>ublk-aot serve: one device in the foreground until SIGINT/SIGTERM (or until it is deleted from outside).</summary>
public static class Serve
{
    public sealed class Args
    {
        public string? Backend;
        public DeviceOptions Device = new();
        public bool Stats;
        /// <summary>serve --metrics: where to serve /metrics (Prometheus text format), or null.</summary>
        public MetricsEndpoint? Metrics;
        /// <summary>`recover`: the device must be waiting for recovery (no new device is made).</summary>
        public bool MustRecover;
        /// <summary>`serve --config DIR/NAME.conf`: NAME, the device's name for udev (/dev/disk/by-ublk/NAME).</summary>
        public string? Name;
        /// <summary>`serve --config`: "FILE:LINE: " of the backend= line, to name it in a refusal of the SPEC.</summary>
        public string? BackendWhere;
    }

    public static Args Parse(string[] argv, bool backendRequired = true)
    {
        var a = new Args();
        for (int i = 0; i < argv.Length; i++)
            if (!Option(a, argv, ref i)) throw new UsageException("serve: unknown option '" + argv[i] + "'");
        return Finish(a, backendRequired, "serve: ");
    }

    /// <summary>
    /// Applies the serve option at argv[i] (and its value, advancing i) to <paramref name="a"/>; false when argv[i] is
    /// not a serve option. The one parser of option values: the command line and `serve --config FILE` both use it.
    /// </summary>
    internal static bool Option(Args a, string[] argv, ref int i)
    {
        DeviceOptions d = a.Device;
        string arg = argv[i];
        // The limits and their wording live in DeviceOptions (from the kernel's constants): a value out of range is
        // refused here in those words, and Validate checks the whole set in Finish.
        switch (arg)
        {
            case "--backend": a.Backend = Value(argv, ref i); break;
            case "--queues": d.Queues = Int(DeviceOptions.QueuesRange, Value(argv, ref i)); break;
            case "--depth": d.Depth = Int(DeviceOptions.DepthRange, Value(argv, ref i)); break;
            case "--block-size":
                // Not a number: 0, which Validate refuses in its own words.
                d.BlockSize = uint.TryParse(Value(argv, ref i), NumberStyles.None, CultureInfo.InvariantCulture, out uint bs) ? bs : 0;
                break;
            case "--max-io":
            {
                string v = Value(argv, ref i);
                if (!Sizes.TryParse(v, out ulong bytes)) throw new UsageException("serve: " + Sizes.Invalid(v, "--max-io"));
                if (DeviceOptions.ValidateMaxIo(bytes) is { } bad) throw new UsageException("serve: " + bad);
                d.MaxIoBytes = (uint)bytes;
                break;
            }
            case "--read-only": d.ReadOnly = true; break;
            case "--id": d.Id = Int(DeviceOptions.IdRange, Value(argv, ref i)); break;
            case "--cpus": d.Cpus = ParseCpuList(Value(argv, ref i)); break;
            case "--stats": a.Stats = true; break;
            case "--metrics":
                a.Metrics = MetricsEndpoint.TryParse(Value(argv, ref i), out string? metricsError) ?? throw new UsageException("serve: " + metricsError);
                break;
            case "--fixed-buffers": d.FixedBuffers = true; break;
            case "--huge-buffers": d.HugeBuffers = true; break;
            case "--no-partition-scan": d.NoPartitionScan = true; break;
            case "--recovery":
            {
                string v = Value(argv, ref i);
                d.Recovery = StateFile.ParseRecovery(v) ?? throw new UsageException("serve: --recovery must be reissue, fail-io or off, got '" + v + "'");
                break;
            }
            case "--io-mode":
            {
                string v = Value(argv, ref i);
                d.IoMode = IoModes.Parse(v) ?? throw new UsageException("serve: --io-mode must be " + string.Join(", ", IoModes.Names) + ", got '" + v + "'");
                break;
            }
            case "--idle-release": d.IdleRelease = TimeSpan.FromSeconds(Int(DeviceOptions.IdleReleaseRange, Value(argv, ref i))); break;
            case "--poll": d.PollMicros = Int(DeviceOptions.PollRange, Value(argv, ref i)); break;
            default: return false;
        }
        return true;
    }

    private static string Value(string[] argv, ref int i)
    {
        if (i + 1 >= argv.Length) throw new UsageException("serve: " + argv[i] + " needs a value");
        return argv[++i];
    }

    /// <summary>Checks the options as a whole (<paramref name="where"/> starts each refusal) and sets the test seams.</summary>
    internal static Args Finish(Args a, bool backendRequired, string where)
    {
        DeviceOptions d = a.Device;
        if (d.Validate() is { } invalid) throw new UsageException(where + invalid);
        // Test seams, not options: only the integration tests set this.
        string hook = Environment.GetEnvironmentVariable("UBLK_AOT_TEST_HOOK") ?? "";
        d.TestHoldFetch = hook == "hold-fetch";
        d.TestBadAutoBufIndex = hook == "auto-buf-bad-index";
        if (a.Backend == null && backendRequired) throw new UsageException("serve: --backend SPEC is required (" + BackendTable.Syntax + ")");
        return a;
    }

    /// <summary>A whole number for the option of <paramref name="range"/>; anything else is refused in the range's words.</summary>
    private static int Int(OptionRange range, string v)
    {
        if (!int.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out int n) || !range.Contains(n))
            throw new UsageException("serve: " + range.Refuse(v));
        return n;
    }

    /// <summary>"0,2-3" → [0, 2, 3].</summary>
    public static int[] ParseCpuList(string text)
    {
        var cpus = new List<int>();
        int ncpu = Environment.ProcessorCount;
        foreach (string part in text.Split(','))
        {
            int dash = part.IndexOf('-');
            bool ok;
            int lo, hi;
            if (dash < 0) { ok = int.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out lo); hi = lo; }
            else ok = int.TryParse(part.AsSpan(0, dash), NumberStyles.None, CultureInfo.InvariantCulture, out lo)
                    & int.TryParse(part.AsSpan(dash + 1), NumberStyles.None, CultureInfo.InvariantCulture, out hi);
            if (!ok || lo > hi) throw new UsageException("serve: --cpus expects a list like 0,2-3, got '" + text + "'");
            if (hi >= ncpu) throw new UsageException("serve: --cpus names CPU " + hi + " but this machine has CPUs 0-" + (ncpu - 1));
            for (int c = lo; c <= hi; c++) cpus.Add(c);
        }
        return cpus.ToArray();
    }

    /// <summary>serve's arguments: the command line, or with --config FILE the file's.</summary>
    public static Args ParseCommandLineOrConfig(string[] argv) => Array.IndexOf(argv, ServeConfig.Option) >= 0 ? ServeConfig.Load(argv) : Parse(argv);

    public static int Run(string[] argv) => Run(ParseCommandLineOrConfig(argv));

    /// <summary>
    /// ublk-aot recover ID [--backend SPEC [serve options]] [--stats]: a new server for device ID, whose server died.
    /// Without --backend, the SPEC and options come from the device's state file.
    /// </summary>
    public static int Recover(string[] argv) => Run(ParseRecover(argv));

    /// <summary>recover's arguments: the device id, and the options given or those of its state file.</summary>
    public static Args ParseRecover(string[] argv)
    {
        if (argv.Length == 0 || !CommandLine.TryParseId(argv[0], out uint id))
            throw new UsageException("recover: expected a device id, got '" + (argv.Length == 0 ? "" : argv[0]) + "'");
        Args a = Parse(argv[1..], backendRequired: false);
        if (a.Backend == null)
        {
            string[] rest = argv[1..];
            for (int i = 0; i < rest.Length; i++)
            {
                string arg = rest[i];
                if (arg == "--stats") continue;
                if (arg == "--metrics") { i++; continue; } // not a device option: never in the state file
                throw new UsageException("recover: " + arg + " needs --backend SPEC (without it, everything comes from " + StateFile.PathOf(id) + ")");
            }
            StateFile.State st = StateFile.Read(id)
                ?? throw new UsageException("recover: no state file " + StateFile.PathOf(id) + " for ublk device " + id + ": give --backend SPEC");
            a.Backend = st.Backend;
            a.Device = st.Device;
            if (a.Device.Validate() is { } invalid) throw new UsageException("recover: " + StateFile.PathOf(id) + ": " + invalid);
        }
        a.Device.Id = (int)id;
        a.MustRecover = true;
        return a;
    }

    private static int Run(Args a)
    {
        // --metrics is bound first, before the backend is opened (a file may be created) or the device made: an
        // address in use is refused in one line with nothing left behind. It answers once the device is live.
        using MetricsServer? metrics = a.Metrics is { } ep ? MetricsServer.Bind(ep) : null;
        BackendSpec spec;
        try { spec = BackendTable.Parse(a.Backend!, new SpecContext(a.Device.ReadOnly)); }
        catch (SpecException e) when (a.BackendWhere != null) { throw new UsageException(a.BackendWhere + e.Message); }
        using (spec)
        {
            return spec.Build(new Runner(a, spec, metrics));
        }
    }

    private sealed class Runner(Args a, BackendSpec spec, MetricsServer? metrics) : IBackendConsumer<int>
    {
        public int Use<TBackend>(TBackend backend, BackendCaps caps, int[] files) where TBackend : struct, IBackend
        {
            if ((a.Device.FitMaxIo(caps) ?? a.Device.ValidateFor(caps)) is { } invalid) throw new UsageException("serve: " + invalid);
            // The backend is open: no mount of a ublk disk stays in this server's namespace (see MountNamespace).
            MountNamespace.DetachUblkMounts();

            using var stop = new ManualResetEventSlim(false);
            using var handOver = new ManualResetEventSlim(false);
            using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.Set(); });
            using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Set(); });
            // SIGUSR1 (`ublk-aot upgrade` on a kernel without QUIESCE_DEV): hand the device to the next server.
            using var sigusr1 = PosixSignalRegistration.Create(HandOverSignal, c => { c.Cancel = true; handOver.Set(); });

            UblkControl ctrl;
            try { ctrl = CommandLine.OpenControl(); }
            catch (UblkException e) { throw new UsageException(e.Message); }
            using (ctrl)
            {
                // serve --id N on a device whose server died recovers it (a service manager's restart just works).
                bool recover = a.MustRecover;
                if (a.Device.Id >= 0 && ctrl.TryGetDevInfo((uint)a.Device.Id, out ublksrv_ctrl_dev_info existing) == 0)
                {
                    existing = Settle(ctrl, (uint)a.Device.Id, existing);
                    recover |= UblkDevice.WaitsForRecovery(existing);
                    // A config's device (the unit's own id) made without recovery, whose server died: nothing can serve
                    // it again, and a restart must not stop at "id in use". Removed, then made anew from the same backend.
                    if (!recover && a.Name != null && !CommandLine.ServerAlive(existing))
                    {
                        Console.Error.WriteLine("ublk-aot: device " + a.Device.Id + " of a dead server (pid " + existing.ublksrv_pid +
                            ", recovery " + CommandLine.RecoveryOf(existing) + ") is removed and made again");
                        ctrl.StopDev((uint)a.Device.Id);
                        if (!CommandLine.DeleteStopped(ctrl, (uint)a.Device.Id))
                            throw new UblkException("device " + a.Device.Id + " of a dead server could not be removed", Errno.EBUSY);
                    }
                }
                // The io mode: a recovered device keeps its own (UblkDevice.Recover); a new one gets the requested mode,
                // or auto's pick, refused here in one line if the backend or the kernel cannot have it.
                if (!recover)
                {
                    IoMode? mode = IoModes.Resolve(a.Device.IoMode, caps.Modes, spec.Describe(), ctrl.Features, a.Device.FixedBuffers,
                        UblkDevice.KernelRelease(), out string? modeError);
                    a.Device.IoMode = mode ?? throw new UsageException("serve: " + modeError);
                }
                UblkDevice dev;
                // The control socket (`ublk-aot resize`) is bound once the id is known, before the device goes live, so
                // that a failure to make it leaves no device behind; it answers once the device is live.
                ControlSocket? control = null;
                void BeforeLive(UblkDevice d)
                {
                    SaveState(d, a);
                    // udev reads the name when the disk appears at START_DEV (60-ublk-aot.rules: ublk-aot udev-name).
                    SaveName(d.Id, a.Name, keep: recover);
                    control = ControlSocket.Bind(d.Id);
                }
                try
                {
                    dev = recover
                        ? UblkDevice.Recover(ctrl, (uint)a.Device.Id, a.Device, backend, caps, files, RecoveryStartTimeout, BeforeLive)
                        : UblkDevice.Create(ctrl, a.Device, backend, caps, files, BeforeLive);
                }
                catch (UblkException e) when (e.Errno is Errno.EEXIST or Errno.EACCES or Errno.EPERM or Errno.EINVAL or Errno.EOPNOTSUPP or Errno.ENODEV or Errno.EBUSY)
                {
                    control?.Dispose();
                    throw new UsageException(e.Message);
                }
                catch
                {
                    control?.Dispose();
                    throw;
                }
                string why;
                bool handedOver = false;
                using (dev)
                {
                    Console.Out.WriteLine(dev.BlockDevicePath);
                    Console.Out.Flush();
                    ublksrv_ctrl_dev_info info = dev.Info;
                    Console.Error.WriteLine("ublk-aot: " + (dev.Recovered ? "recovered " + dev.BlockDevicePath + ", serving " : "serving ") + spec.Describe() + " as " + dev.BlockDevicePath + ": " + Sizes.Format(caps.Size) +
                        ", " + info.nr_hw_queues + " queue(s) x depth " + info.queue_depth + ", block " + a.Device.BlockSize +
                        ", max io " + Sizes.Format(info.max_io_buf_bytes) + (a.Device.ReadOnly ? ", read-only" : "") +
                        ", recovery " + DeviceOptions.RecoveryName(a.Device.Recovery) + ", io mode " + IoModes.Name(a.Device.IoMode) +
                        ", kernel features 0x" + ctrl.Features.ToString("x", CultureInfo.InvariantCulture));
                    // The device is live (START_DEV or END_USER_RECOVERY done): a Type=notify unit is now started.
                    SdNotify.Notify("READY=1\nSTATUS=" + (dev.Recovered ? "recovered and serving " : "serving ") + dev.BlockDevicePath + " from " +
                        spec.Describe() + ", " + Sizes.Format(caps.Size) + ", " + info.nr_hw_queues + " queue(s), io mode " + IoModes.Name(a.Device.IoMode) +
                        ", recovery " + DeviceOptions.RecoveryName(a.Device.Recovery));
                    using (control)
                    {
                        control!.Start(("resize", req => Resize(ctrl, dev, spec, a, req)),
                            ("stats", _ => "ok " + StatsReport.Json(StatsSnapshot.Take(ctrl, dev, a.Device.IoMode))));
                        metrics?.Start(() => StatsReport.Prometheus(StatsSnapshot.Take(ctrl, dev, a.Device.IoMode)));
                        if (metrics != null) Console.Error.WriteLine("ublk-aot: metrics of " + dev.BlockDevicePath + " at " + metrics.Endpoint.Text + " (GET /metrics)");
                        // Stopped before the device and the control device go: it reads both.
                        try { why = Wait(ctrl, dev, stop, handOver); }
                        finally { metrics?.Dispose(); }
                    }
                    SdNotify.Notify("STOPPING=1\nSTATUS=" + why + "; " + (dev.HandedOver ? "handing " + dev.BlockDevicePath + " over" : "stopping " + dev.BlockDevicePath));
                    if (dev.HandedOver)
                    {
                        handedOver = true;
                        Console.Error.WriteLine("ublk-aot: " + why + "; " + dev.BlockDevicePath + " handed over to its next server (not removed)");
                    }
                    else Console.Error.WriteLine("ublk-aot: " + why + "; stopping " + dev.BlockDevicePath);
                }
                bool failed = false;
                foreach (UblkQueue q in dev.Queues)
                {
                    if (q.Failure is { } f) { Console.Error.WriteLine("ublk-aot: queue " + q.QueueId + ": " + f.Message); failed = true; }
                }
                if (a.Stats) PrintStats(dev, a.Device.IoMode);
                if (handedOver) return failed ? 1 : 0; // the state file stays: the next server recovers from it
                StateFile.Delete(dev.Id);
                Console.Error.WriteLine("ublk-aot: " + dev.BlockDevicePath + " removed");
                return failed ? 1 : 0;
            }
        }
    }

    /// <summary>How long START_USER_RECOVERY is retried while the dead server's /dev/ublkcN is still being released.</summary>
    private static readonly TimeSpan RecoveryStartTimeout = TimeSpan.FromSeconds(30);

    /// <summary>A recoverable device's SPEC and options go to its state file before it goes live.</summary>
    private static void SaveState(UblkDevice dev, Args a)
    {
        DeviceOptions o = a.Device;
        // A recovered device keeps the mode it was made with, whatever this command line said (or did not say).
        if ((dev.Info.flags & UblkConst.UBLK_F_USER_RECOVERY) != 0)
            o.Recovery = (dev.Info.flags & UblkConst.UBLK_F_USER_RECOVERY_FAIL_IO) != 0 ? RecoveryMode.FailIo : RecoveryMode.Reissue;
        if (o.Recovery == RecoveryMode.Off) return;
        try { StateFile.Write(dev.Id, a.Backend!, o); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UblkException("cannot write the state file " + StateFile.PathOf(dev.Id) + ": " + e.Message);
        }
    }

    /// <summary>
    /// The name file of a device served from a config (udev's /dev/disk/by-ublk/NAME). Without a config, a new device
    /// drops a stale one of an earlier device with its id; a recovered one (`recover`, `upgrade`) keeps its name.
    /// </summary>
    private static void SaveName(uint id, string? name, bool keep)
    {
        try
        {
            if (name != null) StateFile.WriteName(id, name);
            else if (!keep) StateFile.DeleteName(id);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UblkException("cannot write the name file " + StateFile.NamePathOf(id) + ": " + e.Message);
        }
    }

    /// <summary>
    /// The "resize BYTES" request of the control socket: the backend first when growing (the file is extended), then
    /// UPDATE_SIZE; when shrinking, UPDATE_SIZE first, then the backend (the file is truncated). Refused, changing
    /// nothing, when the device lacks UBLK_F_UPDATE_SIZE, the size is not a positive multiple of the block size, or
    /// the backend cannot take it (mem:, data beyond the new end, a block device too small).
    /// </summary>
    private static string Resize(UblkControl ctrl, UblkDevice dev, BackendSpec spec, Args a, string arg)
    {
        if (!ulong.TryParse(arg, NumberStyles.None, CultureInfo.InvariantCulture, out ulong bytes))
            return "refused resize: expected a size in bytes, got '" + arg + "'";
        if ((dev.Info.flags & UblkConst.UBLK_F_UPDATE_SIZE) == 0)
            return "refused " + CommandLine.LacksFeature(ctrl, dev.Id, UblkConst.UBLK_F_UPDATE_SIZE, "cannot be resized");
        uint block = a.Device.BlockSize;
        if (bytes == 0 || bytes % block != 0)
            return "refused ublk device " + dev.Id + ": the new size " + bytes + " is not a positive multiple of its block size " + block;
        ulong old = ctrl.GetParams(dev.Id).basic.dev_sectors << 9;
        if (bytes == old) return "ok " + bytes;
        if (spec.CheckResize(bytes) is { } why) return "refused " + why;
        if (bytes > old)
        {
            Action undo = spec.GrowTo(bytes);
            int rc;
            try { rc = ctrl.UpdateSize(dev.Id, bytes >> 9); }
            catch (UblkException) { undo(); throw; }
            if (rc < 0) { undo(); return "error UPDATE_SIZE on ublk device " + dev.Id + " failed: " + Errno.Name(rc); }
        }
        else
        {
            int rc = ctrl.UpdateSize(dev.Id, bytes >> 9);
            if (rc < 0) return "error UPDATE_SIZE on ublk device " + dev.Id + " failed: " + Errno.Name(rc);
            spec.ShrinkTo(bytes);
        }
        Console.Error.WriteLine("ublk-aot: resized " + dev.BlockDevicePath + " from " + Sizes.Format(old) + " to " + Sizes.Format(bytes) + " (" + bytes + " bytes)");
        // A later `recover` opens the backend from the state file: it must describe the new size (Mismatch compares them).
        a.Backend = spec.Respec(a.Backend!, bytes);
        try { SaveState(dev, a); }
        catch (UblkException e) { return "error resized to " + bytes + " bytes, but " + e.Message; }
        return "ok " + bytes;
    }

    /// <summary>The signal `upgrade` sends a server on a kernel without QUIESCE_DEV (SIGUSR1, a raw value).</summary>
    public const PosixSignal HandOverSignal = (PosixSignal)10;

    /// <summary>
    /// 7.x keeps a killed server's device LIVE until the kernel has released its /dev/ublkcN (then QUIESCED or
    /// FAIL_IO); 6.12 switches at once. A LIVE recoverable device whose server is gone is waited for, so that
    /// `recover` and `serve --id` right after a crash see the state the kernel is about to report.
    /// </summary>
    internal static ublksrv_ctrl_dev_info Settle(UblkControl ctrl, uint id, ublksrv_ctrl_dev_info info)
    {
        long until = Environment.TickCount64 + (long)RecoveryStartTimeout.TotalMilliseconds;
        while ((info.flags & UblkConst.UBLK_F_USER_RECOVERY) != 0 && info.state == UblkConst.UBLK_S_DEV_LIVE &&
               !CommandLine.ServerAlive(info) && Environment.TickCount64 < until)
        {
            Thread.Sleep(50);
            if (ctrl.TryGetDevInfo(id, out info) < 0) break;
        }
        return info;
    }

    /// <summary>
    /// Blocks until a signal, a queue exit, or the device disappearing/dying under us. Returns why. A hand-over
    /// (SIGUSR1, or QUIESCE_DEV from `upgrade`: every queue's commands aborted while the device stays LIVE) leaves the
    /// device to the next server (<see cref="UblkDevice.HandedOver"/>).
    /// </summary>
    private static string Wait(UblkControl ctrl, UblkDevice dev, ManualResetEventSlim stop, ManualResetEventSlim handOver)
    {
        WaitHandle[] handles = [stop.WaitHandle, dev.QueueExited.WaitHandle, handOver.WaitHandle];
        while (true)
        {
            int w = WaitHandle.WaitAny(handles, 1000);
            if (w == 0) return "signal received";
            if (w == 1)
            {
                // QUIESCE_DEV aborts every queue's idle tags at once; give the others a moment to drain too.
                if (dev.QueuesEndedClean(TimeSpan.FromSeconds(5)) && ctrl.TryGetDevInfo(dev.Id, out ublksrv_ctrl_dev_info qi) == 0 &&
                    (qi.flags & UblkConst.UBLK_F_USER_RECOVERY) != 0 && qi.state is UblkConst.UBLK_S_DEV_LIVE or UblkConst.UBLK_S_DEV_QUIESCED)
                {
                    dev.HandOver();
                    return "the device was quiesced (upgrade)";
                }
                return "a queue exited";
            }
            if (w == 2)
            {
                handOver.Reset();
                if ((dev.Info.flags & UblkConst.UBLK_F_USER_RECOVERY) == 0)
                {
                    Console.Error.WriteLine("ublk-aot: hand-over signal ignored: " + dev.BlockDevicePath + " was created without --recovery");
                    continue;
                }
                dev.HandOver();
                return "hand-over requested (upgrade)";
            }
            int rc = ctrl.TryGetDevInfo(dev.Id, out ublksrv_ctrl_dev_info info);
            if (rc < 0) return "device was deleted";
            if (info.state != UblkConst.UBLK_S_DEV_LIVE) return "device state is " + UblkConst.StateName(info.state);
        }
    }

    private static void PrintStats(UblkDevice dev, IoMode mode)
    {
        Console.Error.WriteLine("stats io_mode=" + IoModes.Name(mode));
        foreach (UblkQueue q in dev.Queues)
        {
            QueueStats s = q.Stats;
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"stats queue={q.QueueId} cpu={s.Cpu} reads={s.Reads} writes={s.Writes} flushes={s.Flushes} discards={s.Discards} write_zeroes={s.WriteZeroes} other={s.Other} errors={s.Errors} bytes_read={s.BytesRead} bytes_written={s.BytesWritten} loops={s.LoopIterations} idle_releases={s.IdleReleases} reg_fallbacks={s.RegFallbacks} reg_failures={s.RegFailures} poll_hits={s.PollHits} alloc_bytes={s.AllocatedBytes} gc0={s.Gen0Collections}"));
        }
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"stats process gc0={GC.CollectionCount(0)} gc1={GC.CollectionCount(1)} gc2={GC.CollectionCount(2)} allocated={GC.GetTotalAllocatedBytes()}"));
    }
}
