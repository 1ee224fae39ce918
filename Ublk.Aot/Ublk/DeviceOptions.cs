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
}
