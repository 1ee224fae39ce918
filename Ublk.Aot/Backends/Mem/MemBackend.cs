using Ublk.Aot.Abi;
using Ublk.Aot.Interop;
using Ublk.Aot.Ring;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Backends;

/// <summary>
/// mem:SIZE — copy mode: reads and writes are copies between the tag's buffer and the store (the kernel made or
/// makes the other copy). User copy: one copy, straight between the store's pages and the request, by a write
/// (READ) or read (WRITE) on /dev/ublkcN at the tag's offset, through the queue's io_uring.
/// </summary>
public struct MemBackend(MemStore store) : IBackend
{
    private readonly MemStore _store = store;
    private Copy[] _copies = [];

    private struct Copy
    {
        public ulong Offset;
        public uint Length;
        public uint Done;
        public bool Read;
    }

    public void Attach(UblkQueue queue)
    {
        if (queue.Mode == IoMode.UserCopy) _copies = new Copy[queue.Depth];
    }

    public int Submit(UblkQueue queue, ushort tag, in ublksrv_io_desc iod)
    {
        ulong off = iod.start_sector << 9;
        int len = (int)(iod.nr_sectors << 9);
        switch (iod.Op)
        {
            case UblkConst.UBLK_IO_OP_READ:
            case UblkConst.UBLK_IO_OP_WRITE:
                if (!_store.InRange(off, (ulong)len)) return -Errno.EINVAL;
                bool read = iod.Op == UblkConst.UBLK_IO_OP_READ;
                if (queue.Mode == IoMode.UserCopy)
                {
                    ref Copy c = ref _copies[tag];
                    c.Offset = off;
                    c.Length = (uint)len;
                    c.Done = 0;
                    c.Read = read;
                    return IssueCopy(queue, tag, ref c);
                }
                if (read) _store.Slice(off, len).CopyTo(queue.Buffers!.Span(tag, len));
                else queue.Buffers!.Span(tag, len).CopyTo(_store.Slice(off, len));
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

    private readonly int IssueCopy(UblkQueue queue, ushort tag, ref Copy c)
    {
        ref io_uring_sqe sqe = ref queue.GetTargetSqe(tag, 0);
        queue.PrepUserCopy(ref sqe, tag, c.Read, _store.Address(c.Offset + c.Done), c.Length - c.Done, c.Done);
        return Backend.Pending;
    }

    public int Complete(UblkQueue queue, ushort tag, byte subOp, int res)
    {
        ref Copy c = ref _copies[tag];
        if (res == -Errno.EAGAIN || res == -Errno.EINTR) return IssueCopy(queue, tag, ref c);
        if (res < 0) return res;
        if (res == 0) return -Errno.EIO; // the request has fewer bytes than it said
        c.Done += (uint)res;
        return c.Done < c.Length ? IssueCopy(queue, tag, ref c) : (int)c.Length;
    }

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
    public override string? CheckResize(ulong newSize) => "backend mem: cannot be resized (its memory is mapped at a fixed " + Size + " bytes)";

    public override BackendCaps Caps => new()
    {
        Size = Size, Discard = true, WriteZeroes = true, DiscardGranularity = 4096, DataDiesWithServer = true,
        // Copy first, though user copy makes one copy instead of two: the kernel runs every read and write on
        // /dev/ublkcN in an io-wq worker (the file has no FMODE_NOWAIT, so io_uring punts it), and that hop cost more
        // than the second copy at every size (7.3.4, docs/benchmarks.md: 0.999 punts per request; 128k reads 0.28x
        // null in user copy, 0.66x in copy). No zero copy: the data must pass through the store's pages.
        IoModes = [IoMode.Copy, IoMode.UserCopy],
    };
    protected override MemBackend Make() => new(Store);

    public override void Dispose() => _store?.Dispose();
}
