using Ublk.Aot.Abi;
using Ublk.Aot.Interop;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Backends;

/// <summary>mem:SIZE — reads and writes are copies between the tag's buffer and the store.</summary>
public struct MemBackend(MemStore store) : IBackend
{
    private readonly MemStore _store = store;

    public void Attach(UblkQueue queue) { }

    public int Submit(UblkQueue queue, ushort tag, in ublksrv_io_desc iod)
    {
        ulong off = iod.start_sector << 9;
        int len = (int)(iod.nr_sectors << 9);
        switch (iod.Op)
        {
            case UblkConst.UBLK_IO_OP_READ:
                if (!_store.InRange(off, (ulong)len)) return -Errno.EINVAL;
                _store.Slice(off, len).CopyTo(queue.Buffers!.Span(tag, len));
                return len;
            case UblkConst.UBLK_IO_OP_WRITE:
                if (!_store.InRange(off, (ulong)len)) return -Errno.EINVAL;
                queue.Buffers!.Span(tag, len).CopyTo(_store.Slice(off, len));
                return len;
            case UblkConst.UBLK_IO_OP_FLUSH:
                return 0;
            case UblkConst.UBLK_IO_OP_DISCARD:
            case UblkConst.UBLK_IO_OP_WRITE_ZEROES:
                return _store.Zero(off, (ulong)iod.nr_sectors << 9);
            default:
                return -Errno.EOPNOTSUPP;
        }
    }

    public int Complete(UblkQueue queue, ushort tag, byte subOp, int res) => res;

    public void Detach(UblkQueue queue) { }
}

public sealed class MemSpec(ulong size) : LeafSpec<MemBackend>
{
    public static readonly BackendKind Kind = new("mem", "mem:SIZE",
        "RAM, sparse: pages never written cost nothing, discarded ones are given back",
        (r, rest, _) => new MemSpec(r.PositiveSize(rest, "mem size")));

    private MemStore? _store;
    public ulong Size { get; } = size;
    public MemStore Store => _store ??= new MemStore(Size);
    public override string Describe() => "mem:" + Size;

    public override BackendCaps Caps => new() { Size = Size, Discard = true, WriteZeroes = true, DiscardGranularity = 4096, DataDiesWithServer = true };
    protected override MemBackend Make() => new(Store);

    public override void Dispose() => _store?.Dispose();
}
