using System;
using Ublk.Aot.Abi;
using Ublk.Aot.Interop;
using Ublk.Aot.Ring;
using Ublk.Aot.Ublk;
using static Ublk.Aot.Abi.IoUringConst;
using static Ublk.Aot.Abi.UblkConst;

namespace Ublk.Aot.Backends;

/// <summary>
/// file:PATH — every request becomes SQEs on the queue's own io_uring, so one queue keeps many requests in
/// flight. READ/WRITE go to the O_DIRECT fd when there is one; a request the direct path refuses (EINVAL:
/// misaligned for this file system) is retried on the buffered fd. FUA → RWF_DSYNC, FLUSH → fdatasync,
/// DISCARD → punch hole, WRITE_ZEROES → zero range (punch hole, then plain zero writes, where refused).
/// </summary>
public struct FileBackend(BackingFile file) : IBackend
{
    // Fixed-file slots: the queue registers [/dev/ublkcN, direct fd, buffered fd].
    private static readonly int DirectSlot = UblkQueue.FileIndex(0);
    private static readonly int BufferedSlot = UblkQueue.FileIndex(1);
    private const byte SubRw = 0, SubFsync = 1, SubFalloc = 2, SubZeroWrite = 3;

    private readonly BackingFile _file = file;
    private IoState[] _io = [];

    private struct IoState
    {
        public ulong Offset;
        public uint Length;
        public uint Done;
        public byte Op;
        public bool Fua;
        public bool Buffered;
        public int FallocMode;
    }

    public static int[] Files(BackingFile f) => [f.DirectFd, f.BufferedFd];

    public void Attach(UblkQueue queue) => _io = new IoState[queue.Depth];

    public int Submit(UblkQueue queue, ushort tag, in ublksrv_io_desc iod)
    {
        ref IoState s = ref _io[tag];
        s.Offset = iod.start_sector << 9;
        s.Length = iod.nr_sectors << 9;
        s.Done = 0;
        s.Op = iod.Op;
        s.Fua = (iod.op_flags & UBLK_IO_F_FUA) != 0;
        s.Buffered = !_file.Direct;
        // A FLUSH carries no range (its start sector is whatever the block layer left there): check the others only.
        if (s.Op != UBLK_IO_OP_FLUSH && (s.Offset > _file.Size || s.Length > _file.Size - s.Offset)) return -Errno.EINVAL;
        switch (s.Op)
        {
            case UBLK_IO_OP_READ:
            case UBLK_IO_OP_WRITE:
                return IssueRw(queue, tag, ref s);
            case UBLK_IO_OP_FLUSH:
            {
                ref io_uring_sqe sqe = ref queue.GetTargetSqe(tag, SubFsync);
                IoUring.PrepFsync(ref sqe, DirectSlot, IORING_FSYNC_DATASYNC);
                sqe.flags = IOSQE_FIXED_FILE;
                return Backend.Pending;
            }
            case UBLK_IO_OP_DISCARD:
                s.FallocMode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
                return IssueFalloc(queue, tag, ref s);
            case UBLK_IO_OP_WRITE_ZEROES:
                // NOUNMAP: keep the blocks allocated, so zero in place; otherwise a hole is the cheapest zero.
                s.FallocMode = (iod.op_flags & UBLK_IO_F_NOUNMAP) != 0
                    ? FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
                    : FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
                return IssueFalloc(queue, tag, ref s);
            default:
                return -Errno.EOPNOTSUPP;
        }
    }

    private static int IssueRw(UblkQueue queue, ushort tag, ref IoState s)
    {
        TagBuffers buffers = queue.Buffers!;
        ref io_uring_sqe sqe = ref queue.GetTargetSqe(tag, SubRw);
        ulong addr = buffers.Address(tag) + s.Done;
        int slot = s.Buffered ? BufferedSlot : DirectSlot;
        byte op = s.Op == UBLK_IO_OP_READ
            ? (buffers.Registered ? IORING_OP_READ_FIXED : IORING_OP_READ)
            : (buffers.Registered ? IORING_OP_WRITE_FIXED : IORING_OP_WRITE);
        IoUring.PrepRw(ref sqe, op, slot, addr, s.Length - s.Done, s.Offset + s.Done);
        if (buffers.Registered) sqe.buf_index = buffers.RegisteredIndex(tag);
        if (s.Fua && s.Op != UBLK_IO_OP_READ) sqe.rw_flags = RWF_DSYNC;
        sqe.flags = IOSQE_FIXED_FILE;
        return Backend.Pending;
    }

    private static int IssueFalloc(UblkQueue queue, ushort tag, ref IoState s)
    {
        ref io_uring_sqe sqe = ref queue.GetTargetSqe(tag, SubFalloc);
        IoUring.PrepFallocate(ref sqe, BufferedSlot, s.FallocMode, s.Offset, s.Length);
        sqe.flags = IOSQE_FIXED_FILE;
        return Backend.Pending;
    }

    private static int IssueZeroWrite(UblkQueue queue, ushort tag, ref IoState s)
    {
        TagBuffers buffers = queue.Buffers!;
        uint chunk = Math.Min(queue.MaxIoBytes, s.Length - s.Done);
        buffers.Span(tag, (int)chunk).Clear();
        ref io_uring_sqe sqe = ref queue.GetTargetSqe(tag, SubZeroWrite);
        IoUring.PrepWrite(ref sqe, s.Buffered ? BufferedSlot : DirectSlot, buffers.Address(tag), chunk, s.Offset + s.Done);
        sqe.flags = IOSQE_FIXED_FILE;
        return Backend.Pending;
    }

    public int Complete(UblkQueue queue, ushort tag, byte subOp, int res)
    {
        ref IoState s = ref _io[tag];
        switch (subOp)
        {
            case SubRw:
            case SubZeroWrite:
                if (res < 0)
                {
                    // The direct path refuses I/O the file system cannot align: retry the rest buffered.
                    if (res == -Errno.EINVAL && !s.Buffered) { s.Buffered = true; return subOp == SubRw ? IssueRw(queue, tag, ref s) : IssueZeroWrite(queue, tag, ref s); }
                    if (res == -Errno.EAGAIN || res == -Errno.EINTR) return subOp == SubRw ? IssueRw(queue, tag, ref s) : IssueZeroWrite(queue, tag, ref s);
                    return res;
                }
                if (res == 0)
                {
                    if (s.Op != UBLK_IO_OP_READ) return -Errno.EIO; // a write that makes no progress
                    queue.Buffers!.Span(tag, (int)s.Length).Slice((int)s.Done).Clear(); // past EOF reads as zeros
                    return (int)s.Length;
                }
                s.Done += (uint)res;
                if (s.Done < s.Length) return subOp == SubRw ? IssueRw(queue, tag, ref s) : IssueZeroWrite(queue, tag, ref s);
                return subOp == SubRw ? (int)s.Length : 0;
            case SubFsync:
                return res < 0 ? res : 0;
            case SubFalloc:
                if (res >= 0) return 0;
                if (res != -Errno.EOPNOTSUPP && res != -Errno.EINVAL && res != -Errno.ENOSYS) return res;
                if (s.FallocMode == (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE))
                {
                    s.FallocMode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
                    return IssueFalloc(queue, tag, ref s);
                }
                // Discard is a hint: nothing to undo if the file system cannot punch. Zeroes must be written.
                if (s.Op == UBLK_IO_OP_DISCARD) return 0;
                s.Done = 0;
                return IssueZeroWrite(queue, tag, ref s);
            default:
                return -Errno.EIO;
        }
    }

    public void Detach(UblkQueue queue) { }
}
