using System;
using static Ublk.Aot.Abi.UblkConst;

namespace Ublk.Aot.Ublk;

/// <summary>An inclusive range a numeric option must lie in; its message is the one wording of that limit.</summary>
public readonly record struct OptionRange(string Option, long Min, long Max)
{
    public bool Contains(long v) => v >= Min && v <= Max;

    /// <summary>"--queues must be a number between 1 and 4096, got '0'".</summary>
    public string Refuse(string got) => Option + " must be a number between " + Min + " and " + Max + ", got '" + got + "'";
}

/// <summary>What the kernel does with the device when its server dies (UBLK_F_USER_RECOVERY and friends).</summary>
public enum RecoveryMode
{
    /// <summary>The device dies with its server (DEAD); only `del` removes it.</summary>
    Off,
    /// <summary>USER_RECOVERY | USER_RECOVERY_REISSUE: I/O waits for a new server; requests in flight are re-issued to it.</summary>
    Reissue,
    /// <summary>USER_RECOVERY | USER_RECOVERY_FAIL_IO (6.13+): while no server is attached, I/O fails at once.</summary>
    FailIo,
}

/// <summary>How to shape a ublk device. Checked by <see cref="Validate()"/> and <see cref="ValidateFor"/>, the only checks.</summary>
public sealed class DeviceOptions
{
    public const int DefaultDepth = 128;
    public const uint DefaultMaxIo = 512 * 1024;
    public static readonly TimeSpan DefaultIdleRelease = TimeSpan.FromSeconds(20);

    // The limits, from the kernel's own constants (linux/ublk_cmd.h), named by the serve option that sets them.
    public static readonly OptionRange QueuesRange = new("--queues", 1, UBLK_MAX_NR_QUEUES);
    public static readonly OptionRange DepthRange = new("--depth", 1, UBLK_MAX_QUEUE_DEPTH);
    public static readonly OptionRange IdRange = new("--id", 0, int.MaxValue - 1);
    public static readonly OptionRange IdleReleaseRange = new("--idle-release", 0, 86400);
    public static readonly OptionRange PollRange = new("--poll", 0, 10000);
    /// <summary>A request's buffer is addressed with UBLK_IO_BUF_BITS bits (32 MiB).</summary>
    public const ulong MaxIoLimit = 1UL << UBLK_IO_BUF_BITS;

    public int Queues { get; set; } = 1;
    /// <summary>
    /// Test hook (UBLK_AOT_TEST_HOOK=hold-fetch): each queue FETCHes only half its tags, so START_DEV and
    /// END_USER_RECOVERY wait in the kernel. Lets the tests reach a deadline and a death inside recovery.
    /// </summary>
    public bool TestHoldFetch { get; set; }
    public int Depth { get; set; } = DefaultDepth;
    /// <summary>Logical block size: 512 or 4096.</summary>
    public uint BlockSize { get; set; } = 512;
    /// <summary>Largest single request in bytes (a multiple of the page size).</summary>
    public uint MaxIoBytes { get; set; } = DefaultMaxIo;
    public bool ReadOnly { get; set; }
    /// <summary>Device id to ask for; -1 lets the kernel pick.</summary>
    public int Id { get; set; } = -1;
    /// <summary>CPUs to pin queue threads to (queue i gets Cpus[i % n]); null = the kernel's queue affinity.</summary>
    public int[]? Cpus { get; set; }
    /// <summary>On shutdown, use DEL_DEV_ASYNC so a process still holding /dev/ublkbN open does not block us.</summary>
    public bool AsyncDelete { get; set; } = true;
    /// <summary>
    /// A queue that has served no request for this long gives its I/O buffers' pages back to the kernel
    /// (MADV_DONTNEED; they fault in again on the next request). <see cref="TimeSpan.Zero"/> keeps them.
    /// </summary>
    public TimeSpan IdleRelease { get; set; } = DefaultIdleRelease;
    /// <summary>
    /// Register every tag buffer with the queue's io_uring (IORING_REGISTER_BUFFERS), so that a backend's reads and
    /// writes use READ_FIXED/WRITE_FIXED and the kernel does not pin the pages per I/O. Costs depth x max-io bytes
    /// of locked RAM per queue for the device's lifetime, and turns <see cref="IdleRelease"/> off (pinned pages
    /// cannot be given back).
    /// </summary>
    public bool FixedBuffers { get; set; }
    /// <summary>
    /// Each queue's buffer area starts on a 2 MiB boundary and is madvise(MADV_HUGEPAGE)d, so the kernel can back
    /// it with transparent huge pages: fewer page faults and TLB misses, but a buffer touched at all costs its
    /// whole 2 MiB page (a 4 KiB workload keeps depth x max-io resident instead of depth x 4 KiB).
    /// </summary>
    public bool HugeBuffers { get; set; }

    /// <summary>
    /// `serve --poll USECS`: a queue thread that would sleep waiting for a completion first polls its ring for up to
    /// this many microseconds. Lowers latency where each request waits on something fast (a network backend at
    /// queue depth 1) at the price of a CPU busy meanwhile; 0 (the default) sleeps at once.
    /// </summary>
    public int PollMicros { get; set; }

    /// <summary>What happens to the device when this server dies; see <see cref="RecoveryMode"/>.</summary>
    public RecoveryMode Recovery { get; set; }

    /// <summary>How request data moves (serve --io-mode); <see cref="IoMode.Auto"/> until the device resolves it.</summary>
    public IoMode IoMode { get; set; } = IoMode.Auto;

    /// <summary>Test hook (UBLK_AOT_TEST_HOOK=auto-buf-bad-index): every fourth tag's AUTO_BUF_REG index is one the kernel refuses.</summary>
    public bool TestBadAutoBufIndex { get; set; }

    /// <summary>`serve --no-partition-scan`: UBLK_F_NO_AUTO_PART_SCAN (7.0+), START_DEV does not scan for partitions.</summary>
    public bool NoPartitionScan { get; set; }

    public BufferOptions Buffers => new(IdleRelease, FixedBuffers, HugeBuffers, IoMode, TestBadAutoIndex: TestBadAutoBufIndex);

    /// <summary>The UBLK_F_* flags <paramref name="mode"/> asks ADD_DEV for.</summary>
    public static ulong RecoveryFlags(RecoveryMode mode) => mode switch
    {
        RecoveryMode.Reissue => UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE,
        RecoveryMode.FailIo => UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_FAIL_IO,
        _ => 0,
    };

    /// <summary>The --recovery word of a mode.</summary>
    public static string RecoveryName(RecoveryMode mode) => mode switch
    {
        RecoveryMode.Reissue => "reissue",
        RecoveryMode.FailIo => "fail-io",
        _ => "off",
    };

    /// <summary>Checks the options on their own (before any backend is opened); returns a one-line error or null.</summary>
    public string? Validate()
    {
        if (BlockSize != 512 && BlockSize != 4096) return "--block-size must be 512 or 4096";
        if (!QueuesRange.Contains(Queues)) return QueuesRange.Refuse(Queues.ToString());
        if (!DepthRange.Contains(Depth)) return DepthRange.Refuse(Depth.ToString());
        if (Id != -1 && !IdRange.Contains(Id)) return IdRange.Refuse(Id.ToString());
        if (IdleRelease < TimeSpan.Zero || IdleRelease.TotalSeconds > IdleReleaseRange.Max)
            return IdleReleaseRange.Refuse(IdleRelease.TotalSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture));
        if (!PollRange.Contains(PollMicros)) return PollRange.Refuse(PollMicros.ToString());
        string? maxIo = ValidateMaxIo(MaxIoBytes);
        if (maxIo != null) return maxIo;
        return null;
    }

    /// <summary>
    /// Lowers <see cref="MaxIoBytes"/> to what the backend takes (<see cref="BackendCaps.MaxIoBytes"/>, rounded down
    /// to a page); a one-line error if that is less than a page.
    /// </summary>
    public string? FitMaxIo(BackendCaps caps)
    {
        if (caps.MaxIoBytes == 0 || MaxIoBytes <= caps.MaxIoBytes) return null;
        uint page = (uint)Environment.SystemPageSize;
        uint fit = caps.MaxIoBytes / page * page;
        if (fit == 0) return "the backend takes at most " + caps.MaxIoBytes + " bytes per request, less than a page";
        MaxIoBytes = fit;
        return null;
    }

    /// <summary>The max-io check alone, for a value that may not fit the property (e.g. "64M").</summary>
    public static string? ValidateMaxIo(ulong bytes)
    {
        ulong page = (ulong)Environment.SystemPageSize;
        if (bytes < page || bytes % page != 0 || bytes > MaxIoLimit)
            return "--max-io must be a multiple of " + page + " between " + page + " and " + Sizes.Format(MaxIoLimit) + ", got " + bytes;
        return null;
    }

    /// <summary>Checks the options against what the backend can serve; returns a one-line error or null.</summary>
    public string? ValidateFor(BackendCaps caps)
    {
        if (caps.MinBlockSize > BlockSize) return "the backend needs --block-size " + caps.MinBlockSize + " or larger";
        if (caps.Size == 0) return "the backend size is 0";
        if (caps.MaxQueues > 0 && Queues > caps.MaxQueues)
            return "--queues " + Queues + ": the backend serves at most " + caps.MaxQueues + " queue(s)" + (caps.MaxQueuesWhy is { } why ? " (" + why + ")" : "");
        if (caps.Size % BlockSize != 0) return "the backend size " + caps.Size + " is not a multiple of the block size " + BlockSize;
        if (Recovery != RecoveryMode.Off && caps.DataDiesWithServer)
            return "--recovery: this backend's data lives in the server process and dies with it (use file:, or no --recovery)";
        return null;
    }
}
