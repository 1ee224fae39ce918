using System;
using System.Collections.Generic;
using System.Globalization;
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
    }

    public static Args Parse(string[] argv)
    {
        var a = new Args();
        DeviceOptions d = a.Device;
        for (int i = 0; i < argv.Length; i++)
        {
            string arg = argv[i];
            string Value()
            {
                if (i + 1 >= argv.Length) throw new UsageException("serve: " + arg + " needs a value");
                return argv[++i];
            }
            // The limits and their wording live in DeviceOptions (from the kernel's constants): a value out of range is
            // refused here in those words, and Validate checks the whole set below.
            switch (arg)
            {
                case "--backend": a.Backend = Value(); break;
                case "--queues": d.Queues = Int(DeviceOptions.QueuesRange, Value()); break;
                case "--depth": d.Depth = Int(DeviceOptions.DepthRange, Value()); break;
                case "--block-size":
                    // Not a number: 0, which Validate refuses in its own words.
                    d.BlockSize = uint.TryParse(Value(), NumberStyles.None, CultureInfo.InvariantCulture, out uint bs) ? bs : 0;
                    break;
                case "--max-io":
                {
                    string v = Value();
                    if (!Sizes.TryParse(v, out ulong bytes)) throw new UsageException("serve: " + Sizes.Invalid(v, "--max-io"));
                    if (DeviceOptions.ValidateMaxIo(bytes) is { } bad) throw new UsageException("serve: " + bad);
                    d.MaxIoBytes = (uint)bytes;
                    break;
                }
                case "--read-only": d.ReadOnly = true; break;
                case "--id": d.Id = Int(DeviceOptions.IdRange, Value()); break;
                case "--cpus": d.Cpus = ParseCpuList(Value()); break;
                case "--stats": a.Stats = true; break;
                case "--fixed-buffers": d.FixedBuffers = true; break;
                case "--huge-buffers": d.HugeBuffers = true; break;
                case "--idle-release": d.IdleRelease = TimeSpan.FromSeconds(Int(DeviceOptions.IdleReleaseRange, Value())); break;
                default: throw new UsageException("serve: unknown option '" + arg + "'");
            }
        }
        if (d.Validate() is { } invalid) throw new UsageException("serve: " + invalid);
        if (a.Backend == null) throw new UsageException("serve: --backend SPEC is required (" + BackendTable.Syntax + ")");
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

    public static int Run(string[] argv)
    {
        Args a = Parse(argv);
        BackendSpec spec = BackendTable.Parse(a.Backend!, new SpecContext(a.Device.ReadOnly));
        using (spec)
        {
            return spec.Build(new Runner(a, spec));
        }
    }

    private sealed class Runner(Args a, BackendSpec spec) : IBackendConsumer<int>
    {
        public int Use<TBackend>(TBackend backend, BackendCaps caps, int[] files) where TBackend : struct, IBackend
        {
            if (a.Device.ValidateFor(caps) is { } invalid) throw new UsageException("serve: " + invalid);

            using var stop = new ManualResetEventSlim(false);
            using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.Set(); });
            using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Set(); });

            UblkControl ctrl;
            try { ctrl = new UblkControl(); }
            catch (UblkException e) { throw new UsageException(e.Message); }
            using (ctrl)
            {
                UblkDevice dev;
                try { dev = UblkDevice.Create(ctrl, a.Device, backend, caps, files); }
                catch (UblkException e) when (e.Errno is Errno.EEXIST or Errno.EACCES or Errno.EPERM or Errno.EINVAL)
                {
                    throw new UsageException(e.Message);
                }
                string why;
                using (dev)
                {
                    Console.Out.WriteLine(dev.BlockDevicePath);
                    Console.Out.Flush();
                    ublksrv_ctrl_dev_info info = dev.Info;
                    Console.Error.WriteLine("ublk-aot: serving " + spec.Describe() + " as " + dev.BlockDevicePath + ": " + Sizes.Format(caps.Size) +
                        ", " + info.nr_hw_queues + " queue(s) x depth " + info.queue_depth + ", block " + a.Device.BlockSize +
                        ", max io " + Sizes.Format(info.max_io_buf_bytes) + (a.Device.ReadOnly ? ", read-only" : "") +
                        ", kernel features 0x" + ctrl.Features.ToString("x", CultureInfo.InvariantCulture));
                    why = Wait(ctrl, dev, stop);
                    Console.Error.WriteLine("ublk-aot: " + why + "; stopping " + dev.BlockDevicePath);
                }
                bool failed = false;
                foreach (UblkQueue q in dev.Queues)
                {
                    if (q.Failure is { } f) { Console.Error.WriteLine("ublk-aot: queue " + q.QueueId + ": " + f.Message); failed = true; }
                }
                if (a.Stats) PrintStats(dev);
                Console.Error.WriteLine("ublk-aot: " + dev.BlockDevicePath + " removed");
                return failed ? 1 : 0;
            }
        }
    }

    /// <summary>Blocks until a signal, a queue exit, or the device disappearing/dying under us. Returns why.</summary>
    private static string Wait(UblkControl ctrl, UblkDevice dev, ManualResetEventSlim stop)
    {
        WaitHandle[] handles = [stop.WaitHandle, dev.QueueExited.WaitHandle];
        while (true)
        {
            int w = WaitHandle.WaitAny(handles, 1000);
            if (w == 0) return "signal received";
            if (w == 1) return "a queue exited";
            int rc = ctrl.TryGetDevInfo(dev.Id, out ublksrv_ctrl_dev_info info);
            if (rc < 0) return "device was deleted";
            if (info.state != UblkConst.UBLK_S_DEV_LIVE) return "device state is " + UblkConst.StateName(info.state);
        }
    }

    private static void PrintStats(UblkDevice dev)
    {
        foreach (UblkQueue q in dev.Queues)
        {
            QueueStats s = q.Stats;
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"stats queue={q.QueueId} cpu={s.Cpu} reads={s.Reads} writes={s.Writes} flushes={s.Flushes} discards={s.Discards} write_zeroes={s.WriteZeroes} other={s.Other} errors={s.Errors} bytes_read={s.BytesRead} bytes_written={s.BytesWritten} loops={s.LoopIterations} idle_releases={s.IdleReleases} alloc_bytes={s.AllocatedBytes} gc0={s.Gen0Collections}"));
        }
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"stats process gc0={GC.CollectionCount(0)} gc1={GC.CollectionCount(1)} gc2={GC.CollectionCount(2)} allocated={GC.GetTotalAllocatedBytes()}"));
    }
}
