using Ublk.Aot.Abi;
using Ublk.Aot.Interop;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Backends;

/// <summary>Which requests a fault: backend may fail, and how often.</summary>
public sealed class FaultConfig
{
    /// <summary>Probability in [0, 1] that a matching request fails.</summary>
    public double Rate { get; init; } = 0.1;
    /// <summary>Bit i set: ublk op i is eligible (READ=0, WRITE=1, FLUSH=2, DISCARD=3, WRITE_ZEROES=5).</summary>
    public uint OpMask { get; init; } = (1u << UblkConst.UBLK_IO_OP_READ) | (1u << UblkConst.UBLK_IO_OP_WRITE) | (1u << UblkConst.UBLK_IO_OP_FLUSH);
    public ulong Seed { get; init; } = 0x9E3779B97F4A7C15UL;
    /// <summary>errno to fail with (EIO by default).</summary>
    public int Errno { get; init; } = Interop.Errno.EIO;
    /// <summary>Failures injected, all queues together.</summary>
    public long Injected;
}

/// <summary>
/// fault:…:INNER — wraps any backend and fails a chosen fraction of chosen ops with -errno before they reach it,
/// so users can test how their stack handles I/O errors. Decisions come from a per-queue xorshift generator.
/// </summary>
public struct FaultBackend<TInner>(TInner inner, FaultConfig config) : IBackend where TInner : struct, IBackend
{
    private TInner _inner = inner;
    private readonly FaultConfig _config = config;
    private readonly ulong _threshold = config.Rate >= 1.0 ? ulong.MaxValue : (ulong)(config.Rate * 18446744073709551615.0);
    private ulong _state;

    public void Attach(UblkQueue queue)
    {
        _state = _config.Seed ^ ((ulong)queue.QueueId + 1) * 0xBF58476D1CE4E5B9UL;
        if (_state == 0) _state = 1;
        _inner.Attach(queue);
    }

    private ulong Next()
    {
        ulong x = _state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        _state = x;
        return x;
    }

    public int Submit(UblkQueue queue, ushort tag, in ublksrv_io_desc iod)
    {
        if ((_config.OpMask & (1u << iod.Op)) != 0 && _config.Rate > 0 && (_threshold == ulong.MaxValue || Next() < _threshold))
        {
            System.Threading.Interlocked.Increment(ref _config.Injected);
            return -_config.Errno;
        }
        return _inner.Submit(queue, tag, in iod);
    }

    public int Complete(UblkQueue queue, ushort tag, byte subOp, int res) => _inner.Complete(queue, tag, subOp, res);

    public void Detach(UblkQueue queue) => _inner.Detach(queue);
}

public sealed class FaultSpec(FaultConfig config, BackendSpec inner) : BackendSpec
{
    public FaultConfig Config { get; } = config;
    public BackendSpec Inner { get; } = inner;
    public override string Describe() => "fault(rate=" + Config.Rate.ToString(System.Globalization.CultureInfo.InvariantCulture) + ") over " + Inner.Describe();

    public override TResult Build<TResult>(IBackendConsumer<TResult> consumer) => Inner.BuildWithFaults(consumer, Config);

    public override void Dispose() => Inner.Dispose();
}
