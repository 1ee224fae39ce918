using Ublk.Aot.Abi;

namespace Ublk.Aot.Backends;

/// <summary>Which requests a fault: backend may fail, and how often.</summary>
public sealed class FaultConfig
{
    /// <summary>Probability in [0, 1] that a matching request fails.</summary>
    public double Rate { get; set; } = 0.1;
    /// <summary>Bit i set: ublk op i is eligible (READ=0, WRITE=1, FLUSH=2, DISCARD=3, WRITE_ZEROES=5).</summary>
    public uint OpMask { get; set; } = FaultOps.Read | FaultOps.Write | FaultOps.Flush;
    public ulong Seed { get; set; } = 0x9E3779B97F4A7C15UL;
    /// <summary>errno to fail with (EIO by default).</summary>
    public int Errno { get; set; } = Interop.Errno.EIO;
    /// <summary>Failures injected, all queues together.</summary>
    public long Injected;
}

/// <summary>The op bits of <see cref="FaultConfig.OpMask"/>.</summary>
public static class FaultOps
{
    public const uint Read = 1u << UblkConst.UBLK_IO_OP_READ;
    public const uint Write = 1u << UblkConst.UBLK_IO_OP_WRITE;
    public const uint Flush = 1u << UblkConst.UBLK_IO_OP_FLUSH;
    public const uint Discard = 1u << UblkConst.UBLK_IO_OP_DISCARD;
    public const uint WriteZeroes = 1u << UblkConst.UBLK_IO_OP_WRITE_ZEROES;
    public const uint All = Read | Write | Flush | Discard | WriteZeroes;
}
