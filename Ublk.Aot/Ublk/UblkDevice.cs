using System;
using System.IO;
using System.Threading;
using Ublk.Aot.Abi;
using Ublk.Aot.Interop;
using static Ublk.Aot.Abi.UblkConst;

namespace Ublk.Aot.Ublk;

/// <summary>
/// A live ublk device: ADD_DEV → SET_PARAMS → queue threads submit their FETCH_REQs → START_DEV; or, for a device
/// whose server died (USER_RECOVERY): START_USER_RECOVERY → queue threads and FETCH_REQs → END_USER_RECOVERY.
/// <see cref="Dispose"/> tears it down in the order the kernel needs (see AGENTS.md, "Shutdown order").
/// </summary>
public sealed class UblkDevice : IDisposable
{
    private readonly UblkControl _ctrl;
    private readonly DeviceOptions _opts;
    private UblkQueue[] _queues = [];
    private int _charFd = -1;
    private bool _started;
    // Dispose deletes the device only if this process owns it: it added it, or recovered it to LIVE. A recovery that
    // failed half-way leaves the device to the kernel (it waits for the next recovery, or for `del`).
    private bool _owned;
    private int _disposed;

    public uint Id { get; }
    public ublksrv_ctrl_dev_info Info { get; private set; }
    public BackendCaps Caps { get; }
    /// <summary>This server took over a device whose server had died (START/END_USER_RECOVERY).</summary>
    public bool Recovered { get; private set; }
    public string BlockDevicePath => "/dev/ublkb" + Id;
    public string CharDevicePath => "/dev/ublkc" + Id;
    public UblkQueue[] Queues => _queues;

    /// <summary>The queues handed their tags to the next server (<see cref="HandOver"/>); the device was left to it.</summary>
    public bool HandedOver { get; private set; }

    /// <summary>Set when any queue thread has exited (a failure, or every tag aborted by the kernel).</summary>
    public ManualResetEventSlim QueueExited { get; } = new(false);

    private UblkDevice(UblkControl ctrl, DeviceOptions opts, uint id, BackendCaps caps)
    {
        _ctrl = ctrl;
        _opts = opts;
        Id = id;
        Caps = caps;
    }

    /// <summary>
    /// Creates and starts the device. <paramref name="beforeStart"/> runs once the id is known and the queues are
    /// ready, just before START_DEV (e.g. to persist what a later recovery needs). On any failure, nothing is left
    /// behind in the kernel.
    /// </summary>
    public static UblkDevice Create<TBackend>(UblkControl ctrl, DeviceOptions o, TBackend backend, BackendCaps caps, int[] backendFiles,
        Action<UblkDevice>? beforeStart = null)
        where TBackend : struct, IBackend
    {
        string? err = o.Validate() ?? o.ValidateFor(caps);
        if (err != null) throw new UblkException(err, Errno.EINVAL);
        ulong recovery = DeviceOptions.RecoveryFlags(o.Recovery);
        RequireFeatures(ctrl, "--recovery " + DeviceOptions.RecoveryName(o.Recovery), recovery);
        // A recoverable device can also be handed over without a failed request (QUIESCE_DEV, 7.x) where the kernel
        // has it; without it an upgrade takes the crash path, which REISSUE makes error-free as well.
        if (recovery != 0) recovery |= ctrl.Features & UBLK_F_QUIESCE;
        if (o.IoMode == IoMode.Auto) o.IoMode = IoModes.Resolve(IoMode.Auto, caps.Modes, "", ctrl.Features, o.FixedBuffers, "", out _)!.Value;
        ulong ioFlags = IoModes.Flags(o.IoMode);
        RequireFeatures(ctrl, "--io-mode " + IoModes.Name(o.IoMode), ioFlags);
        // Live resize (UPDATE_SIZE) and a stop that refuses while the disk is open (TRY_STOP_DEV), where the kernel has them.
        ulong optional = ctrl.Features & (UBLK_F_UPDATE_SIZE | UBLK_F_SAFE_STOP_DEV);
        // --no-partition-scan: required, so refused on a kernel without it (6.12 would drop the flag silently).
        ulong partScan = o.NoPartitionScan ? UBLK_F_NO_AUTO_PART_SCAN : 0;
        RequireFeatures(ctrl, "--no-partition-scan", partScan);

        ublksrv_ctrl_dev_info info = default;
        info.nr_hw_queues = (ushort)o.Queues;
        info.queue_depth = (ushort)o.Depth;
        info.max_io_buf_bytes = o.MaxIoBytes;
        info.dev_id = o.Id < 0 ? uint.MaxValue : (uint)o.Id;
        info.ublksrv_pid = Environment.ProcessId;
        // Ask only for what the kernel has: CMD_IOCTL_ENCODE makes the I/O commands ioctl-encoded too.
        info.flags = (ctrl.Features & UBLK_F_CMD_IOCTL_ENCODE) | recovery | ioFlags;
        info.flags |= optional | partScan;
        info = ctrl.AddDev(info);

        var dev = new UblkDevice(ctrl, o, info.dev_id, caps) { Info = info, _owned = true };
        try
        {
            // A kernel that does not know a flag drops it silently (6.12 masks ADD_DEV's flags with its UBLK_F_ALL).
            if ((info.flags & recovery) != recovery)
                throw new UblkException("ublk device " + info.dev_id + ": the kernel dropped the recovery flags " + MissingFeatures(info.flags, recovery), Errno.EOPNOTSUPP);
            if ((info.flags & ioFlags) != ioFlags)
                throw new UblkException("ublk device " + info.dev_id + ": the kernel dropped the io mode flags " + MissingFeatures(info.flags, ioFlags), Errno.EOPNOTSUPP);
            if ((info.flags & partScan) != partScan)
                throw new UblkException("ublk device " + info.dev_id + ": the kernel dropped " + MissingFeatures(info.flags, partScan) + " (--no-partition-scan)", Errno.EOPNOTSUPP);
            ctrl.SetParams(dev.Id, BuildParams(o, caps, info));
            dev.StartQueues(backend, backendFiles);
            beforeStart?.Invoke(dev);
            ctrl.StartDev(dev.Id, Environment.ProcessId);
            dev._started = true;
            dev.Info = ctrl.GetDevInfo(dev.Id);
            WaitForNode(dev.BlockDevicePath);
            return dev;
        }
        catch
        {
            DisposeQuietly(dev);
            throw;
        }
    }

    /// <summary>Tears down after a failed start; the start's own error is the one reported.</summary>
    private static void DisposeQuietly(UblkDevice dev)
    {
        try { dev.Dispose(); }
        catch (UblkException) { }
    }

    /// <summary>The device is waiting for a new server (its server died with USER_RECOVERY set).</summary>
    public static bool WaitsForRecovery(in ublksrv_ctrl_dev_info info)
        => (info.flags & UBLK_F_USER_RECOVERY) != 0 && (info.state == UBLK_S_DEV_QUIESCED || info.state == UBLK_S_DEV_FAIL_IO);

    /// <summary>
    /// Attaches this process as the new server of device <paramref name="id"/>, whose server died. The device's own
    /// layout (queues, depth, max io, from GET_DEV_INFO) is served; <paramref name="o"/> and the backend must match
    /// the device's size, block size and read-only attribute, or the recovery is refused before anything changes.
    /// <paramref name="beforeEnd"/> runs just before END_USER_RECOVERY. On failure after START_USER_RECOVERY the
    /// device is left to the kernel, waiting for the next recovery or for `del` (never deleted here).
    /// </summary>
    public static UblkDevice Recover<TBackend>(UblkControl ctrl, uint id, DeviceOptions o, TBackend backend, BackendCaps caps, int[] backendFiles,
        TimeSpan startTimeout, Action<UblkDevice>? beforeEnd = null)
        where TBackend : struct, IBackend
    {
        string? err = o.Validate() ?? o.ValidateFor(caps);
        if (err != null) throw new UblkException(err, Errno.EINVAL);
        if (ctrl.TryGetDevInfo(id, out ublksrv_ctrl_dev_info info) < 0) throw new UblkException("no ublk device " + id, Errno.ENODEV);
        if ((info.flags & UBLK_F_USER_RECOVERY) == 0)
            throw new UblkException("ublk device " + id + " was created without --recovery: it cannot be recovered (remove it with: ublk-aot del " + id + ")", Errno.EINVAL);
        if (!WaitsForRecovery(info))
            throw new UblkException("ublk device " + id + " is " + StateName(info.state) + (info.state == UBLK_S_DEV_LIVE ? " (server pid " + info.ublksrv_pid + ")" : "") +
                ": only a device whose server died can be recovered", Errno.EBUSY);
        ublk_params p = ctrl.GetParams(id);
        string? mismatch = Mismatch(p, o, caps);
        if (mismatch != null) throw new UblkException("ublk device " + id + ": " + mismatch, Errno.EINVAL);

        // The dead server's /dev/ublkcN may still be being released (EBUSY): retry until the deadline.
        var wait = System.Diagnostics.Stopwatch.StartNew();
        int rc;
        while ((rc = ctrl.StartUserRecovery(id)) == -Errno.EBUSY && wait.Elapsed < startTimeout) Thread.Sleep(100);
        if (rc < 0)
            throw new UblkException("START_USER_RECOVERY on ublk device " + id + " failed: " + Errno.Name(rc) +
                (rc == -Errno.EBUSY ? " (its dead server still holds /dev/ublkc" + id + " after " + (int)startTimeout.TotalSeconds + " s)" : ""), rc);

        // The device keeps the io mode it was made with: serve it in that one (the backend must have it).
        o.IoMode = IoModes.OfDeviceFlags(info.flags);
        if (Array.IndexOf(caps.Modes, o.IoMode) < 0)
            throw new UblkException("ublk device " + id + " was created with --io-mode " + IoModes.Name(o.IoMode) + ", which this backend cannot serve", Errno.EINVAL);
        var dev = new UblkDevice(ctrl, o, id, caps) { Info = info };
        try
        {
            dev.StartQueues(backend, backendFiles);
            beforeEnd?.Invoke(dev);
            ctrl.EndUserRecovery(id, Environment.ProcessId);
            dev._started = dev._owned = true;
            dev.Recovered = true;
            dev.Info = ctrl.GetDevInfo(id);
            return dev;
        }
        catch
        {
            DisposeQuietly(dev);
            throw;
        }
    }

    /// <summary>Why a backend and options cannot serve the device described by <paramref name="p"/>, or null.</summary>
    internal static string? Mismatch(in ublk_params p, DeviceOptions o, BackendCaps caps)
    {
        ulong size = p.basic.dev_sectors << 9;
        if (size != caps.Size) return "the backend has " + caps.Size + " bytes, the device " + size;
        uint block = 1u << p.basic.logical_bs_shift;
        if (block != o.BlockSize) return "the device has block size " + block + ", not " + o.BlockSize;
        bool ro = (p.basic.attrs & UBLK_ATTR_READ_ONLY) != 0;
        if (ro != (o.ReadOnly || caps.ReadOnly)) return ro ? "the device is read-only: recover it with --read-only" : "the device is writable, the backend or options read-only";
        return null;
    }

    internal static string MissingFeatures(ulong have, ulong want) => IoModes.FeatureList(want & ~have);

    /// <summary>", which this kernel (RELEASE, ublk features 0x…) does not have": the one wording of a missing feature.</summary>
    public static string NotInKernel(ulong features, string? release = null)
        => ", which this kernel (" + (release ?? KernelRelease()) + ", ublk features 0x" + features.ToString("x", System.Globalization.CultureInfo.InvariantCulture) + ") does not have";

    /// <summary>Refuses <paramref name="what"/> (an option) in one line if the kernel lacks any of <paramref name="want"/>.</summary>
    private static void RequireFeatures(UblkControl ctrl, string what, ulong want)
    {
        if ((ctrl.Features & want) != want)
            throw new UblkException(what + " needs " + MissingFeatures(ctrl.Features, want) + NotInKernel(ctrl.Features), Errno.EOPNOTSUPP);
    }

    /// <summary>The running kernel's release, for messages.</summary>
    public static string KernelRelease()
    {
        try { return File.ReadAllText("/proc/sys/kernel/osrelease").Trim(); }
        catch (IOException) { return "unknown kernel"; }
        catch (UnauthorizedAccessException) { return "unknown kernel"; }
    }

    private void StartQueues<TBackend>(TBackend backend, int[] backendFiles) where TBackend : struct, IBackend
    {
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
            var geometry = new QueueGeometry(Id, (ushort)q, Info.queue_depth, Info.max_io_buf_bytes, _opts.IoMode);
            // The hold-fetch test hook leaves half the tags without a FETCH, so START_DEV/END_USER_RECOVERY block.
            int fetchTags = _opts.TestHoldFetch ? Info.queue_depth / 2 : -1;
            var queue = new UblkQueue<TBackend>(geometry, BufferStrategy.Create(_opts.Buffers with { Bounce = Caps.UserCopyBounce }), _charFd, cpus, backendFiles, backend, ioctl, fetchTags, _opts.PollMicros);
            _queues[q] = queue;
            queue.Start(ready, QueueExited);
        }
        ready.Wait();
        foreach (UblkQueue q in _queues)
            if (q.Failure is { } f) throw new UblkException("queue " + q.QueueId + " of ublk device " + Id + " failed to start: " + f.Message);
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
        if (caps.VolatileCache) p.basic.attrs |= UBLK_ATTR_VOLATILE_CACHE | (caps.NoFua ? 0 : UBLK_ATTR_FUA);
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
            // ENOENT: the node is not there yet; EBUSY: /dev/ublkcN has one opener at a time (udev may be probing it).
            if ((err != Errno.ENOENT && err != Errno.EBUSY) || i >= 500) throw new SysException("open(" + CharDevicePath + ")", err);
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
    /// Every queue thread has ended clean within <paramref name="wait"/> (the kernel aborted their commands, or a
    /// hand-over) with nothing taken left uncommitted.
    /// </summary>
    public bool QueuesEndedClean(TimeSpan wait)
    {
        long until = Environment.TickCount64 + (long)wait.TotalMilliseconds;
        while (true)
        {
            bool all = true;
            foreach (UblkQueue q in _queues)
            {
                if (!q.Join(TimeSpan.Zero)) { all = false; continue; }
                if (q.Failure != null || !q.EndedClean) return false; // a failed queue answers at once
            }
            if (all) return true;
            if (Environment.TickCount64 >= until) return false;
            Thread.Sleep(10);
        }
    }

    /// <summary>
    /// Leaves the device to its next server (an upgrade): every queue finishes and commits what its backend holds,
    /// leaves newer requests to the kernel (re-issued to the next server), and exits; /dev/ublkcN is closed; the
    /// device is neither stopped nor deleted. The kernel then moves it to QUIESCED (or FAIL_IO) and `recover` takes it.
    /// </summary>
    public void HandOver()
    {
        if ((Info.flags & UBLK_F_USER_RECOVERY) == 0)
            throw new UblkException("ublk device " + Id + " was created without --recovery: it cannot be handed over", Errno.EINVAL);
        foreach (UblkQueue q in _queues) q.RequestHandOver();
        foreach (UblkQueue q in _queues) q.Join();
        if (_charFd >= 0) { Libc.Close(_charFd); _charFd = -1; }
        _started = _owned = false;
        HandedOver = true;
    }

    /// <summary>
    /// Shutdown order: STOP_DEV while the queues still serve (in-flight I/O completes, del_gendisk flushes),
    /// then stop and join the queue threads, unmap and close their rings (the kernel cancels the parked
    /// FETCHes), close /dev/ublkcN, and DEL_DEV (async when asked, so an opener cannot block us).
    /// A control command that misses its deadline does not stop the teardown; the first such failure is thrown after it.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        UblkException? failed = null;
        if (_started)
        {
            try { _ctrl.StopDev(Id); }
            catch (UblkException e) { failed = e; }
        }
        foreach (UblkQueue q in _queues) q?.RequestStop();
        foreach (UblkQueue q in _queues) q?.Join();
        if (_charFd >= 0) { Libc.Close(_charFd); _charFd = -1; }
        if (_owned)
        {
            try { _ctrl.DelDev(Id, _opts.AsyncDelete); }
            catch (UblkException e) { failed ??= e; }
        }
        QueueExited.Dispose();
        if (failed != null) throw failed;
    }
}
