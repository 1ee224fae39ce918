using System;
using System.IO;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Threading;
using Ublk.Aot.Abi;
using Ublk.Aot.Interop;
using Ublk.Aot.Ring;
using static Ublk.Aot.Abi.UblkConst;

namespace Ublk.Aot.Ublk;

/// <summary>
/// /dev/ublk-control: control commands as IORING_OP_URING_CMD on a SQE128 ring (ublksrv_ctrl_cmd sits in
/// sqe->cmd). Commands are serialised by a lock; none of this is on the data path.
/// <para>
/// Every command has a deadline (<see cref="Timeout"/>). The kernel runs control commands in an io-wq worker (a
/// non-blocking issue returns EAGAIN), so the submitting thread can stop waiting: on expiry the command is cancelled
/// (IORING_OP_ASYNC_CANCEL signals the worker, which ends an interruptible wait such as START_DEV's) and a
/// <see cref="UblkException"/> with ETIMEDOUT names the command, the device and the kernel. A command the kernel
/// cannot interrupt stays in its worker; its buffer is then never freed (the kernel may still write it) and its late
/// completion is recognised by its sequence number and dropped.
/// </para>
/// </summary>
public sealed unsafe class UblkControl : IDisposable
{
    public const string ControlPath = "/dev/ublk-control";
    private const uint AutoId = uint.MaxValue;
    /// <summary>The deadline of one control command unless the caller says otherwise (peers use 30 s as well).</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(30);
    /// <summary>How long a cancelled command gets to come back before it is abandoned to its worker.</summary>
    private static readonly TimeSpan CancelGrace = TimeSpan.FromSeconds(2);
    private const int BufferSize = 4096;
    private const ulong CancelTag = 1UL << 63; // user_data of our ASYNC_CANCELs; commands count up from 1

    private readonly int _fd;
    private readonly IoUring _ring;
    private readonly Lock _lock = new();
    private bool _useIoctlEncoding;
    private ulong _seq;
    // The command buffer (dev_info, params, cpu mask) lives in native memory owned here, not on a caller's stack:
    // a command abandoned after its deadline may still be written by the kernel, so that buffer is left allocated.
    private byte* _buf;

    /// <summary>The kernel's feature flags (UBLK_U_CMD_GET_FEATURES); 0 on kernels without the command.</summary>
    public ulong Features { get; }

    /// <summary>Deadline of each command (<see cref="System.Threading.Timeout.InfiniteTimeSpan"/>: none).</summary>
    public TimeSpan Timeout { get; }

    public UblkControl() : this(DefaultTimeout) { }

    public UblkControl(TimeSpan timeout)
    {
        Timeout = timeout;
        _fd = Libc.Open(ControlPath, Libc.O_RDWR | Libc.O_CLOEXEC, 0);
        if (_fd < 0)
        {
            int err = Errno.Last;
            throw err switch
            {
                Errno.ENOENT => new UblkException(ControlPath + " not found: load ublk_drv (modprobe ublk_drv)", err),
                Errno.EACCES or Errno.EPERM => new UblkException(
                    "permission denied opening " + ControlPath + ": run as root (or give this user access with UBLK_F_UNPRIVILEGED_DEV udev rules)", err),
                _ => new UblkException("cannot open " + ControlPath + ": " + Errno.Name(err), err),
            };
        }
        try
        {
            _ring = new IoUring(16, new IoUringOptions { Sqe128 = true, FallbackOnEinval = true });
        }
        catch
        {
            Libc.Close(_fd);
            throw;
        }
        _buf = (byte*)NativeMemory.AlignedAlloc(BufferSize, 64);
        _useIoctlEncoding = true;
        ulong features = 0; // UBLK_FEATURES_LEN bytes
        int rc = SendWith(UBLK_U_CMD_GET_FEATURES, 0, AutoId, ref features);
        if (rc >= 0) Features = features;
        // GET_FEATURES exists only in ioctl encoding (6.5+); a kernel without it may also lack encoded commands.
        _useIoctlEncoding = rc >= 0 && (features & UBLK_F_CMD_IOCTL_ENCODE) != 0;
    }

    private static ublksrv_ctrl_cmd NewCmd(uint devId)
    {
        ublksrv_ctrl_cmd c = default;
        c.dev_id = devId;
        c.queue_id = ushort.MaxValue; // "not for a queue"
        return c;
    }

    /// <summary>The command's name from its number (the low byte of both encodings), for messages.</summary>
    public static string CommandName(uint op) => (op & 0xff) switch
    {
        UBLK_CMD_GET_QUEUE_AFFINITY => "GET_QUEUE_AFFINITY",
        UBLK_CMD_GET_DEV_INFO => "GET_DEV_INFO",
        UBLK_CMD_ADD_DEV => "ADD_DEV",
        UBLK_CMD_DEL_DEV => "DEL_DEV",
        UBLK_CMD_START_DEV => "START_DEV",
        UBLK_CMD_STOP_DEV => "STOP_DEV",
        UBLK_CMD_SET_PARAMS => "SET_PARAMS",
        UBLK_CMD_GET_PARAMS => "GET_PARAMS",
        UBLK_CMD_START_USER_RECOVERY => "START_USER_RECOVERY",
        UBLK_CMD_END_USER_RECOVERY => "END_USER_RECOVERY",
        UBLK_CMD_GET_DEV_INFO2 => "GET_DEV_INFO2",
        UBLK_U_CMD_GET_FEATURES & 0xff => "GET_FEATURES",
        UBLK_U_CMD_DEL_DEV_ASYNC & 0xff => "DEL_DEV_ASYNC",
        UBLK_U_CMD_UPDATE_SIZE & 0xff => "UPDATE_SIZE",
        UBLK_U_CMD_QUIESCE_DEV & 0xff => "QUIESCE_DEV",
        UBLK_U_CMD_TRY_STOP_DEV & 0xff => "TRY_STOP_DEV",
        UBLK_U_CMD_REG_BUF & 0xff => "REG_BUF",
        UBLK_U_CMD_UNREG_BUF & 0xff => "UNREG_BUF",
        uint n => "command 0x" + n.ToString("x2", System.Globalization.CultureInfo.InvariantCulture),
    };

    /// <summary>
    /// Sends one control command, preferring the ioctl encoding; returns the CQE result (or -errno). Throws
    /// <see cref="UblkException"/> (ETIMEDOUT) when the command is not back within <paramref name="timeout"/>.
    /// </summary>
    private int Send(uint encodedOp, uint legacyOp, ref ublksrv_ctrl_cmd cmd, TimeSpan timeout)
    {
        uint op = _useIoctlEncoding || legacyOp == 0 ? encodedOp : legacyOp;
        lock (_lock)
        {
            ref io_uring_sqe sqe = ref _ring.GetSqe();
            if (Unsafe.IsNullRef(ref sqe)) return -Errno.EBUSY;
            ulong seq = ++_seq;
            IoUring.PrepUringCmd(ref sqe, _fd, op);
            sqe.user_data = seq;
            MemoryMarshal.Write(_ring.CmdPayload(ref sqe), in cmd);
            int rc = _ring.Submit();
            if (rc < 0) return rc;
            long deadline = timeout == System.Threading.Timeout.InfiniteTimeSpan ? long.MaxValue
                : Environment.TickCount64 + (long)timeout.TotalMilliseconds;
            rc = WaitFor(seq, deadline, out int res);
            if (rc == 0) return res;
            if (rc != -Errno.ETIME) return rc;

            // Past the deadline: ask io_uring to cancel it (the worker gets a signal) and give it a moment to return.
            ref io_uring_sqe c = ref _ring.GetSqe();
            if (!Unsafe.IsNullRef(ref c))
            {
                IoUring.PrepCancel(ref c, seq, CancelTag | seq);
                _ring.Submit();
            }
            bool back = WaitFor(seq, Environment.TickCount64 + (long)CancelGrace.TotalMilliseconds, out _) == 0;
            if (!back) _buf = (byte*)NativeMemory.AlignedAlloc(BufferSize, 64); // the old one stays with the kernel
            throw new UblkException(CommandName(op) + " on " + DevName(cmd.dev_id) + " did not complete within " +
                FormatTimeout(timeout) + " (kernel " + UblkDevice.KernelRelease() + ")" +
                (back ? "; it was cancelled" : "; it is still pending in the kernel"), Errno.ETIMEDOUT);
        }
    }

    /// <summary>Waits for the CQE of command <paramref name="seq"/>, dropping others (late or cancel CQEs). 0, -ETIME or -errno.</summary>
    private int WaitFor(ulong seq, long deadline, out int res)
    {
        while (true)
        {
            long left = deadline == long.MaxValue ? -1 : deadline - Environment.TickCount64;
            if (deadline != long.MaxValue && left <= 0) { res = 0; return -Errno.ETIME; }
            int rc = _ring.WaitCqe(out io_uring_cqe cqe, left < 0 ? -1 : left * 1_000_000);
            if (rc == -Errno.ETIME) continue;
            if (rc < 0) { res = 0; return rc; }
            if (cqe.user_data == seq) { res = cqe.res; return 0; }
        }
    }

    private static string FormatTimeout(TimeSpan t)
        => t.TotalSeconds >= 1 && t.TotalSeconds == Math.Floor(t.TotalSeconds)
            ? ((long)t.TotalSeconds).ToString(System.Globalization.CultureInfo.InvariantCulture) + " s"
            : ((long)t.TotalMilliseconds).ToString(System.Globalization.CultureInfo.InvariantCulture) + " ms";

    private static string DevName(uint id) => id == AutoId ? "ublk (new device)" : "ublk device " + id;

    /// <summary>Sends a command whose buffer (addr, len) is <paramref name="data"/>; returns the CQE result (or -errno).</summary>
    private int SendWith<T>(uint encodedOp, uint legacyOp, uint devId, ref T data, ulong data0 = 0) where T : unmanaged
    {
        if (sizeof(T) > BufferSize) throw new ArgumentException("control buffer too large", nameof(data));
        ublksrv_ctrl_cmd cmd = NewCmd(devId);
        cmd.data0 = data0;
        lock (_lock)
        {
            byte* buf = _buf; // Send may replace _buf after a timeout; this command's buffer is the one it was given
            *(T*)buf = data;
            cmd.addr = (ulong)buf;
            cmd.len = (ushort)sizeof(T);
            int rc = Send(encodedOp, legacyOp, ref cmd, Timeout);
            if (rc >= 0) data = *(T*)buf;
            return rc;
        }
    }

    /// <summary>Sends a command without a buffer (only dev_id and data[0]); returns the CQE result (or -errno).</summary>
    private int SendPlain(uint encodedOp, uint legacyOp, uint devId, ulong data0 = 0, TimeSpan? timeout = null)
    {
        ublksrv_ctrl_cmd cmd = NewCmd(devId);
        cmd.data0 = data0;
        return Send(encodedOp, legacyOp, ref cmd, timeout ?? Timeout);
    }

    private void Check(int rc, string what, uint devId)
    {
        if (rc < 0)
            throw new UblkException(what + " on " + DevName(devId) + " failed: " + Errno.Name(rc) + " (" + Marshal.GetPInvokeErrorMessage(-rc) + ")", rc);
    }

    /// <summary>UBLK_U_CMD_ADD_DEV. <paramref name="info"/>.dev_id = uint.MaxValue asks the kernel to pick the id.</summary>
    public ublksrv_ctrl_dev_info AddDev(ublksrv_ctrl_dev_info info)
    {
        // Kernel 6.17+ checks that the id in the command equals the id in dev_info: set both.
        int rc = SendWith(UBLK_U_CMD_ADD_DEV, UBLK_CMD_ADD_DEV, info.dev_id, ref info);
        if (rc < 0)
        {
            string why = -rc switch
            {
                Errno.EEXIST => "device id " + info.dev_id + " is in use",
                Errno.EACCES => "the kernel refused a new device (ublks_max reached? see /sys/module/ublk_drv/parameters/ublks_max)",
                Errno.EPERM => "permission denied (run as root)",
                Errno.EINVAL => "invalid parameters (queues " + info.nr_hw_queues + ", depth " + info.queue_depth + ", max io " + info.max_io_buf_bytes + ", flags 0x" + info.flags.ToString("x") + ")",
                _ => Errno.Name(rc),
            };
            throw new UblkException("ADD_DEV failed: " + why, rc);
        }
        return info;
    }

    public void SetParams(uint devId, ublk_params p)
    {
        p.len = (uint)sizeof(ublk_params);
        Check(SendWith(UBLK_U_CMD_SET_PARAMS, UBLK_CMD_SET_PARAMS, devId, ref p), "SET_PARAMS", devId);
    }

    public ublk_params GetParams(uint devId)
    {
        ublk_params p = default;
        p.len = (uint)sizeof(ublk_params);
        Check(SendWith(UBLK_U_CMD_GET_PARAMS, UBLK_CMD_GET_PARAMS, devId, ref p), "GET_PARAMS", devId);
        return p;
    }

    public ublksrv_ctrl_dev_info GetDevInfo(uint devId)
    {
        Check(TryGetDevInfo(devId, out ublksrv_ctrl_dev_info info), "GET_DEV_INFO", devId);
        return info;
    }

    /// <summary>Returns 0 or -errno (no throw): ENODEV/ENOENT mean the device does not exist.</summary>
    public int TryGetDevInfo(uint devId, out ublksrv_ctrl_dev_info info)
    {
        info = default;
        int rc = SendWith(UBLK_U_CMD_GET_DEV_INFO, UBLK_CMD_GET_DEV_INFO, devId, ref info);
        return rc < 0 ? rc : 0;
    }

    /// <summary>CPUs the block layer maps to hardware queue <paramref name="queue"/> (GET_QUEUE_AFFINITY); empty on failure.</summary>
    public int[] GetQueueAffinity(uint devId, ushort queue)
    {
        CpuMask mask = default;
        if (SendWith(UBLK_U_CMD_GET_QUEUE_AFFINITY, UBLK_CMD_GET_QUEUE_AFFINITY, devId, ref mask, data0: queue) < 0) return [];
        return mask.ToCpus();
    }

    /// <summary>START_DEV: blocks in the kernel until every queue has submitted its FETCH_REQs.</summary>
    public void StartDev(uint devId, int serverPid)
        => Check(SendPlain(UBLK_U_CMD_START_DEV, UBLK_CMD_START_DEV, devId, (ulong)serverPid), "START_DEV", devId);

    /// <summary>
    /// START_USER_RECOVERY: the device (QUIESCED or FAIL_IO) is to get a new server. Returns 0 or -errno: EBUSY while
    /// the dead server's /dev/ublkcN is not yet fully released (retry), EINVAL on a device without USER_RECOVERY or,
    /// on 6.12, one whose queues never became ready.
    /// </summary>
    public int StartUserRecovery(uint devId) => SendPlain(UBLK_U_CMD_START_USER_RECOVERY, UBLK_CMD_START_USER_RECOVERY, devId);

    /// <summary>
    /// END_USER_RECOVERY: blocks in the kernel until every tag of every queue has its FETCH, then the device is LIVE
    /// again with <paramref name="serverPid"/> (7.x checks it is the process that opened /dev/ublkcN).
    /// </summary>
    public void EndUserRecovery(uint devId, int serverPid)
        => Check(SendPlain(UBLK_U_CMD_END_USER_RECOVERY, UBLK_CMD_END_USER_RECOVERY, devId, (ulong)serverPid), "END_USER_RECOVERY", devId);

    /// <summary>
    /// QUIESCE_DEV (7.x, devices made with UBLK_F_QUIESCE): stops new I/O reaching the server, waits up to
    /// <paramref name="wait"/> for every queue to have an idle tag, then completes the server's parked commands with
    /// UBLK_IO_RES_ABORT; the server commits what it holds and exits, and the device waits for recovery. Returns 0 or
    /// -errno (EBUSY: the wait expired; the device then takes no new I/O until its server exits).
    /// </summary>
    public int QuiesceDev(uint devId, TimeSpan wait)
        => SendPlain(UBLK_U_CMD_QUIESCE_DEV, 0, devId, (ulong)Math.Max(1, (long)wait.TotalMilliseconds), wait + TimeSpan.FromSeconds(5));

    public int StopDev(uint devId) => SendPlain(UBLK_U_CMD_STOP_DEV, UBLK_CMD_STOP_DEV, devId);

    /// <summary>
    /// UPDATE_SIZE (devices made with UBLK_F_UPDATE_SIZE): the disk's capacity becomes <paramref name="sectors"/>
    /// 512-byte sectors (data[0]); the kernel notifies udev. Returns 0 or -errno.
    /// </summary>
    public int UpdateSize(uint devId, ulong sectors) => SendPlain(UBLK_U_CMD_UPDATE_SIZE, 0, devId, sectors);

    /// <summary>
    /// TRY_STOP_DEV (devices made with UBLK_F_SAFE_STOP_DEV): STOP_DEV unless /dev/ublkbN has an opener (a process, a
    /// mount), then -EBUSY and nothing changes. Returns 0 or -errno.
    /// </summary>
    public int TryStopDev(uint devId) => SendPlain(UBLK_U_CMD_TRY_STOP_DEV, 0, devId);

    /// <summary>DEL_DEV waits until every opener of /dev/ublkbN is gone; DEL_DEV_ASYNC (6.8+) returns at once.</summary>
    public int DelDev(uint devId, bool async)
    {
        if (async)
        {
            int rc = SendPlain(UBLK_U_CMD_DEL_DEV_ASYNC, 0, devId);
            if (rc != -Errno.EOPNOTSUPP && rc != -Errno.EINVAL) return rc;
        }
        return SendPlain(UBLK_U_CMD_DEL_DEV, UBLK_CMD_DEL_DEV, devId);
    }

    /// <summary>Where the kernel lists its ublk devices: one ublkcN entry per device, until the id is freed.</summary>
    public const string SysfsCharClass = "/sys/class/ublk-char";

    /// <summary>
    /// Where the devices are looked up when sysfs is not mounted (an initramfs whose /init mounted only proc and
    /// devtmpfs): the /dev/ublkcN nodes devtmpfs makes and removes with the same kernel device. devtmpfs removes a
    /// node shortly after the device is gone, so this source only ever errs towards "still there".
    /// </summary>
    private const string DevDir = "/dev";

    /// <summary>sysfs is mounted (/sys/class exists); with it, /sys/class/ublk-char is the only source.</summary>
    private static bool HaveSysfs => Directory.Exists("/sys/class");

    /// <summary>The kernel still has device <paramref name="id"/> (its id is taken), whatever its state.</summary>
    public static bool DeviceExists(uint id)
        => HaveSysfs ? Directory.Exists(SysfsCharClass + "/ublkc" + id) : File.Exists(DevDir + "/ublkc" + id);

    /// <summary>Ids of the ublk devices the kernel has (from /sys/class/ublk-char, else /dev/ublkcN), ascending.</summary>
    public static uint[] ListDeviceIds()
    {
        string dir = HaveSysfs ? SysfsCharClass : DevDir;
        if (!Directory.Exists(dir)) return [];
        string[] names = Directory.GetFileSystemEntries(dir, "ublkc*");
        uint[] ids = new uint[names.Length];
        int n = 0;
        foreach (string path in names)
        {
            if (uint.TryParse(Path.GetFileName(path).AsSpan(5), out uint id)) ids[n++] = id;
        }
        Array.Resize(ref ids, n);
        Array.Sort(ids);
        return ids;
    }

    public void Dispose()
    {
        _ring.Dispose();
        Libc.Close(_fd);
        // Only the current buffer: one given to a command abandoned after its deadline was replaced, and stays.
        NativeMemory.AlignedFree(_buf);
        _buf = null;
    }
}
