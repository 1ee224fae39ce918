using System;
using System.IO;
using System.Threading;
using Ublk.Aot.Abi;
using Ublk.Aot.Interop;
using static Ublk.Aot.Abi.UblkConst;

namespace Ublk.Aot.Ublk;

/// <summary>
/// A live ublk device: ADD_DEV → SET_PARAMS → queue threads submit their FETCH_REQs → START_DEV.
/// <see cref="Dispose"/> tears it down in the order the kernel needs (see AGENTS.md, "Shutdown order").
/// </summary>
public sealed class UblkDevice : IDisposable
{
    private readonly UblkControl _ctrl;
    private readonly DeviceOptions _opts;
    private UblkQueue[] _queues = [];
    private int _charFd = -1;
    private bool _started;
    private int _disposed;

    public uint Id { get; }
    public ublksrv_ctrl_dev_info Info { get; private set; }
    public BackendCaps Caps { get; }
    public string BlockDevicePath => "/dev/ublkb" + Id;
    public string CharDevicePath => "/dev/ublkc" + Id;
    public UblkQueue[] Queues => _queues;

    /// <summary>Set when any queue thread has exited (a failure, or every tag aborted by the kernel).</summary>
    public ManualResetEventSlim QueueExited { get; } = new(false);

    private UblkDevice(UblkControl ctrl, DeviceOptions opts, uint id, BackendCaps caps)
    {
        _ctrl = ctrl;
        _opts = opts;
        Id = id;
        Caps = caps;
    }

    /// <summary>Creates and starts the device. On any failure, nothing is left behind in the kernel.</summary>
    public static UblkDevice Create<TBackend>(UblkControl ctrl, DeviceOptions o, TBackend backend, BackendCaps caps, int[] backendFiles)
        where TBackend : struct, IBackend
    {
        string? err = o.Validate() ?? o.ValidateFor(caps);
        if (err != null) throw new UblkException(err, Errno.EINVAL);

        ublksrv_ctrl_dev_info info = default;
        info.nr_hw_queues = (ushort)o.Queues;
        info.queue_depth = (ushort)o.Depth;
        info.max_io_buf_bytes = o.MaxIoBytes;
        info.dev_id = o.Id < 0 ? uint.MaxValue : (uint)o.Id;
        info.ublksrv_pid = Environment.ProcessId;
        // Ask only for what the kernel has: CMD_IOCTL_ENCODE makes the I/O commands ioctl-encoded too.
        info.flags = ctrl.Features & UBLK_F_CMD_IOCTL_ENCODE;
        info = ctrl.AddDev(info);

        var dev = new UblkDevice(ctrl, o, info.dev_id, caps) { Info = info };
        try
        {
            dev.Start(backend, backendFiles);
            return dev;
        }
        catch
        {
            dev.Dispose();
            throw;
        }
    }

    private void Start<TBackend>(TBackend backend, int[] backendFiles) where TBackend : struct, IBackend
    {
        _ctrl.SetParams(Id, BuildParams(_opts, Caps, Info));
        _charFd = OpenCharDevice();

        // The kernel may clamp the queue count (to the CPU count): use what it granted.
        int n = Info.nr_hw_queues;
        bool ioctl = (Info.flags & UBLK_F_CMD_IOCTL_ENCODE) != 0;
        int[] online = OnlineCpus();
        _queues = new UblkQueue[n];
        using var ready = new CountdownEvent(n);
        for (int q = 0; q < n; q++)
        {
            // --cpus pins queue q to one CPU; otherwise to the CPUs the block layer maps to this queue.
            int[] cpus = _opts.Cpus is { Length: > 0 } c ? [c[q % c.Length]] : _ctrl.GetQueueAffinity(Id, (ushort)q);
            if (cpus.Length == 0) cpus = [online[q % online.Length]];
            var geometry = new QueueGeometry(Id, (ushort)q, Info.queue_depth, Info.max_io_buf_bytes);
            var queue = new UblkQueue<TBackend>(geometry, BufferStrategy.Create(_opts.Buffers), _charFd, cpus, backendFiles, backend, ioctl);
            _queues[q] = queue;
            queue.Start(ready, QueueExited);
        }
        ready.Wait();
        foreach (UblkQueue q in _queues)
            if (q.Failure is { } f) throw new UblkException("queue " + q.QueueId + " of ublk device " + Id + " failed to start: " + f.Message);

        _ctrl.StartDev(Id, Environment.ProcessId);
        _started = true;
        Info = _ctrl.GetDevInfo(Id);
        WaitForNode(BlockDevicePath);
    }

    internal static ublk_params BuildParams(DeviceOptions o, BackendCaps caps, ublksrv_ctrl_dev_info info)
    {
        ublk_params p = default;
        p.types = UBLK_PARAM_TYPE_BASIC;
        byte lbs = (byte)System.Numerics.BitOperations.Log2(o.BlockSize);
        p.basic.logical_bs_shift = lbs;
        p.basic.physical_bs_shift = Math.Max(lbs, (byte)12);
        p.basic.io_min_shift = lbs;
        p.basic.io_opt_shift = 12;
        p.basic.max_sectors = info.max_io_buf_bytes >> 9;
        p.basic.dev_sectors = caps.Size >> 9;
        if (o.ReadOnly || caps.ReadOnly) p.basic.attrs |= UBLK_ATTR_READ_ONLY;
        if (caps.VolatileCache) p.basic.attrs |= UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA;
        if (caps.Rotational) p.basic.attrs |= UBLK_ATTR_ROTATIONAL;
        if (caps.Discard || caps.WriteZeroes)
        {
            p.types |= UBLK_PARAM_TYPE_DISCARD;
            p.discard.discard_granularity = Math.Max(caps.DiscardGranularity, o.BlockSize);
            p.discard.max_discard_segments = 1;
            if (caps.Discard) p.discard.max_discard_sectors = uint.MaxValue >> 9;
            if (caps.WriteZeroes) p.discard.max_write_zeroes_sectors = uint.MaxValue >> 9;
        }
        return p;
    }

    private int OpenCharDevice()
    {
        // udev (or devtmpfs) creates the node shortly after ADD_DEV.
        for (int i = 0; ; i++)
        {
            int fd = Libc.Open(CharDevicePath, Libc.O_RDWR | Libc.O_CLOEXEC, 0);
            if (fd >= 0) return fd;
            int err = Errno.Last;
            if (err != Errno.ENOENT || i >= 500) throw new SysException("open(" + CharDevicePath + ")", err);
            Thread.Sleep(10);
        }
    }

    private static void WaitForNode(string path)
    {
        for (int i = 0; i < 500 && !File.Exists(path); i++) Thread.Sleep(10);
    }

    private static int[] OnlineCpus()
    {
        int n = Environment.ProcessorCount;
        var cpus = new int[n];
        for (int i = 0; i < n; i++) cpus[i] = i;
        return cpus;
    }

    /// <summary>
    /// Shutdown order: STOP_DEV while the queues still serve (in-flight I/O completes, del_gendisk flushes),
    /// then stop and join the queue threads, unmap and close their rings (the kernel cancels the parked
    /// FETCHes), close /dev/ublkcN, and DEL_DEV (async when asked, so an opener cannot block us).
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        if (_started) _ctrl.StopDev(Id);
        foreach (UblkQueue q in _queues) q?.RequestStop();
        foreach (UblkQueue q in _queues) q?.Join();
        if (_charFd >= 0) { Libc.Close(_charFd); _charFd = -1; }
        _ctrl.DelDev(Id, _opts.AsyncDelete);
        QueueExited.Dispose();
    }
}
