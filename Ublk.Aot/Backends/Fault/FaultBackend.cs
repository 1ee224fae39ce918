using Ublk.Aot.Abi;
using Ublk.Aot.Interop;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Backends;

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
