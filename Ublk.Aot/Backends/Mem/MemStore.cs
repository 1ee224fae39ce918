using System;
using Ublk.Aot.Interop;

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

    /// <summary>The address of byte <paramref name="offset"/>, for an SQE that copies into or out of the store.</summary>
    public ulong Address(ulong offset) => (ulong)(_base + offset);

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
