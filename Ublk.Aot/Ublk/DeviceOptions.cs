using System;

namespace Ublk.Aot.Ublk;

/// <summary>How to shape a ublk device. Validated by <see cref="UblkDevice.Create{TBackend}"/>.</summary>
public sealed class DeviceOptions
{
    public const int DefaultDepth = 128;
    public const uint DefaultMaxIo = 512 * 1024;

    public int Queues { get; set; } = 1;
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
    public static readonly TimeSpan DefaultIdleRelease = TimeSpan.FromSeconds(20);
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
}
