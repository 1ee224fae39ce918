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
/// Data meets the file by io mode: copy — file I/O on the tag buffer the kernel copied into or will copy out of;
/// user copy — the same tag buffer as a bounce buffer, filled or drained by a read or write on /dev/ublkcN first
/// (WRITE) or after (READ); zero copy and auto-buf-reg — READ_FIXED/WRITE_FIXED straight on the request's own pages,
/// installed in the tag's fixed-buffer slot (by a linked REGISTER_IO_BUF, or by the kernel).
/// </summary>
public struct FileBackend(BackingFile file) : IBackend
{
    // Fixed-file slots: the queue registers [/dev/ublkcN, direct fd, buffered fd].
    private static readonly int DirectSlot = UblkQueue.FileIndex(0);
    private static readonly int BufferedSlot = UblkQueue.FileIndex(1);
    private const byte SubRw = 0, SubFsync = 1, SubFalloc = 2, SubZeroWrite = 3, SubCopy = 4;

    private readonly BackingFile _file = file;
    private IoState[] _io = [];

    private struct IoState
    {
        public ulong Offset;
        public uint Length;
        public uint Done;
        public uint Copied; // user copy: bytes moved between the bounce buffer and the request
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
                switch (queue.Mode)
                {
                    case IoMode.UserCopy:
                        s.Copied = 0;
                        return s.Op == UBLK_IO_OP_WRITE ? IssueCopy(queue, tag, ref s) : IssueRw(queue, tag, ref s);
                    case IoMode.ZeroCopy:
                    case IoMode.AutoBufReg:
                        if (queue.NeedsRegister(tag, in iod) && !queue.LinkRegister(tag)) return -Errno.EIO;
                        return IssueRw(queue, tag, ref s);
                    default:
                        return IssueRw(queue, tag, ref s);
                }
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
        ref io_uring_sqe sqe = ref queue.GetTargetSqe(tag, SubRw);
        int slot = s.Buffered ? BufferedSlot : DirectSlot;
        bool read = s.Op == UBLK_IO_OP_READ;
        if (IoModes.IsZeroCopy(queue.Mode))
        {
            // The request's pages are fixed buffer RequestBufferTable.Index(tag); addr is the offset into them (a
            // kernel-registered buffer starts at address 0).
            IoUring.PrepRw(ref sqe, read ? IORING_OP_READ_FIXED : IORING_OP_WRITE_FIXED, slot, s.Done, s.Length - s.Done, s.Offset + s.Done);
            sqe.buf_index = RequestBufferTable.Index(tag);
        }
        else
        {
            TagBuffers buffers = queue.Buffers!;
            ulong addr = buffers.Address(tag) + s.Done;
            byte op = read
                ? (buffers.Registered ? IORING_OP_READ_FIXED : IORING_OP_READ)
                : (buffers.Registered ? IORING_OP_WRITE_FIXED : IORING_OP_WRITE);
            IoUring.PrepRw(ref sqe, op, slot, addr, s.Length - s.Done, s.Offset + s.Done);
            if (buffers.Registered) sqe.buf_index = buffers.RegisteredIndex(tag);
        }
        if (s.Fua && !read) sqe.rw_flags = RWF_DSYNC;
        sqe.flags = IOSQE_FIXED_FILE;
        return Backend.Pending;
    }

    /// <summary>User copy: a WRITE's data from the request into the bounce buffer, or a READ's from it into the request.</summary>
    private static int IssueCopy(UblkQueue queue, ushort tag, ref IoState s)
    {
        ref io_uring_sqe sqe = ref queue.GetTargetSqe(tag, SubCopy);
        queue.PrepUserCopy(ref sqe, tag, s.Op == UBLK_IO_OP_READ, queue.Buffers!.Address(tag) + s.Copied, s.Length - s.Copied, s.Copied);
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
        uint chunk = Math.Min(queue.MaxIoBytes, s.Length - s.Done);
        ref io_uring_sqe sqe = ref queue.GetTargetSqe(tag, SubZeroWrite);
        IoUring.PrepWrite(ref sqe, s.Buffered ? BufferedSlot : DirectSlot, queue.ZeroBuffer(), chunk, s.Offset + s.Done);
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
                    // Past EOF (the file shrank under us) reads as zeros; the request's own pages cannot be cleared
                    // from here in the zero-copy modes, so there it is an error.
                    if (IoModes.IsZeroCopy(queue.Mode)) return -Errno.EIO;
                    queue.Buffers!.Span(tag, (int)s.Length).Slice((int)s.Done).Clear();
                    s.Done = s.Length;
                }
                else s.Done += (uint)res;
                if (s.Done < s.Length) return subOp == SubRw ? IssueRw(queue, tag, ref s) : IssueZeroWrite(queue, tag, ref s);
                if (subOp == SubZeroWrite) return 0;
                if (queue.Mode == IoMode.UserCopy && s.Op == UBLK_IO_OP_READ) return IssueCopy(queue, tag, ref s);
                return (int)s.Length;
            case SubCopy:
                if (res == -Errno.EAGAIN || res == -Errno.EINTR) return IssueCopy(queue, tag, ref s);
                if (res < 0) return res;
                if (res == 0) return -Errno.EIO; // the request has fewer bytes than it said
                s.Copied += (uint)res;
                if (s.Copied < s.Length) return IssueCopy(queue, tag, ref s);
                if (s.Op == UBLK_IO_OP_READ) return (int)s.Length;
                s.Done = 0;
                return IssueRw(queue, tag, ref s); // the WRITE's data is in the bounce buffer: now to the file
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
