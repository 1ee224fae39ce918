using System;
using Ublk.Aot.Abi;
using Ublk.Aot.Interop;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Backends;

/// <summary>
/// RAM behind a mem: device. One anonymous MAP_NORESERVE mapping of the full size: pages that were never
/// written cost nothing and read as zeros; DISCARD/WRITE_ZEROES give whole pages back with MADV_DONTNEED
/// (which also makes them read as zeros) and zero the partial edges. No locks: concurrent queues touch
/// disjoint or block-layer-ordered ranges, and the mapping never moves.
/// </summary>
public sealed unsafe class MemStore : IDisposable
{
    private byte* _base;
    private readonly ulong _page = (ulong)Environment.SystemPageSize; // read once: not on the data path
    public ulong Size { get; }

    public MemStore(ulong size)
    {
        Size = size;
        nint p = Libc.Mmap(0, (nuint)size, Libc.PROT_READ | Libc.PROT_WRITE,
            Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | Libc.MAP_NORESERVE, -1, 0);
        if (p == Libc.MAP_FAILED) throw new SysException("mmap(mem backend, " + size + " bytes)", Errno.Last);
        _base = (byte*)p;
    }

    public Span<byte> Slice(ulong offset, int length) => new(_base + offset, length);

    public bool InRange(ulong offset, ulong length) => offset <= Size && length <= Size - offset;

    /// <summary>Zeroes [offset, offset+length): whole pages are released, edges are cleared.</summary>
    public int Zero(ulong offset, ulong length)
    {
        if (!InRange(offset, length)) return -Errno.EINVAL;
        ulong page = _page;
        ulong start = (offset + page - 1) / page * page;
        ulong end = (offset + length) / page * page;
        if (end > start)
        {
            ClearSmall(offset, start - offset);
            if (Libc.Madvise((nint)(_base + start), (nuint)(end - start), Libc.MADV_DONTNEED) != 0) return -Errno.Last;
            ClearSmall(end, offset + length - end);
        }
        else ClearSmall(offset, length);
        return 0;
    }

    private void ClearSmall(ulong offset, ulong length)
    {
        while (length > 0)
        {
            int n = (int)Math.Min(length, int.MaxValue);
            new Span<byte>(_base + offset, n).Clear();
            offset += (ulong)n;
            length -= (ulong)n;
        }
    }

    /// <summary>Resident bytes of the mapping is what the kernel reports; Size is the virtual size.</summary>
    public void Dispose()
    {
        if (_base != null) { Libc.Munmap((nint)_base, (nuint)Size); _base = null; }
    }
}

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
                _store.Slice(off, len).CopyTo(queue.Buffer(tag, len));
                return len;
            case UblkConst.UBLK_IO_OP_WRITE:
                if (!_store.InRange(off, (ulong)len)) return -Errno.EINVAL;
                queue.Buffer(tag, len).CopyTo(_store.Slice(off, len));
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
    private MemStore? _store;
    public ulong Size { get; } = size;
    public MemStore Store => _store ??= new MemStore(Size);
    public override string Describe() => "mem:" + Size;

    public override BackendCaps Caps => new() { Size = Size, Discard = true, WriteZeroes = true, DiscardGranularity = 4096 };
    protected override MemBackend Make() => new(Store);

    public override void Dispose() => _store?.Dispose();
}
