using System;
using Ublk.Aot.Abi;
using Ublk.Aot.Interop;
using Ublk.Aot.Ring;
using Ublk.Aot.Ublk;
using static Ublk.Aot.Abi.IoUringConst;
using static Ublk.Aot.Abi.UblkConst;

namespace Ublk.Aot.Backends;

/// <summary>The open backing file (or block device) shared by all queues of a file: device.</summary>
public sealed unsafe class FileTarget : IDisposable
{
    public string Path { get; }
    public ulong Size { get; }
    public bool IsBlockDevice { get; }
    /// <summary>True when <see cref="DirectFd"/> was opened with O_DIRECT.</summary>
    public bool Direct { get; }
    /// <summary>Logical block size of a block device (O_DIRECT alignment), else 512.</summary>
    public uint LogicalBlockSize { get; }
    public int DirectFd { get; private set; } = -1;
    public int BufferedFd { get; private set; } = -1;

    /// <summary>Opens (and with <paramref name="size"/> creates or extends) the backing file. Throws UblkException with a one-line reason.</summary>
    public FileTarget(string path, ulong? size, bool readOnly, bool? direct)
    {
        Path = path;
        int mode = readOnly ? Libc.O_RDONLY : Libc.O_RDWR;
        bool exists = System.IO.File.Exists(path) || System.IO.Directory.Exists(path);
        if (!exists && size is null) throw new UblkException("backing file not found: " + path + " (add ,size=SIZE to create it)", Errno.ENOENT);
        if (!exists && readOnly) throw new UblkException("backing file not found: " + path, Errno.ENOENT);
        int flags = mode | Libc.O_CLOEXEC | (exists ? 0 : Libc.O_CREAT | Libc.O_EXCL);
        BufferedFd = Libc.Open(path, flags, 0x1a4 /* 0644 */);
        if (BufferedFd < 0)
        {
            int e = Errno.Last;
            throw new UblkException("cannot open backing file " + path + ": " + Errno.Name(e) +
                (e == Errno.EACCES || e == Errno.EPERM ? " (permission denied)" : e == Errno.ENOENT ? " (no such file)" : ""), e);
        }
        try
        {
            Libc.StatBuf st;
            SysException.Check(Libc.FStat(BufferedFd, &st), "fstat(" + path + ")");
            uint type = st.st_mode & Libc.S_IFMT;
            if (type == Libc.S_IFBLK)
            {
                IsBlockDevice = true;
                ulong bytes;
                SysException.Check(Libc.Ioctl(BufferedFd, Libc.BLKGETSIZE64, &bytes), "ioctl(BLKGETSIZE64, " + path + ")");
                int lbs;
                SysException.Check(Libc.Ioctl(BufferedFd, Libc.BLKSSZGET, &lbs), "ioctl(BLKSSZGET, " + path + ")");
                LogicalBlockSize = (uint)lbs;
                if (size is { } want && want > bytes) throw new UblkException("size " + want + " is larger than block device " + path + " (" + bytes + " bytes)", Errno.EINVAL);
                Size = size ?? bytes;
            }
            else if (type == Libc.S_IFREG)
            {
                LogicalBlockSize = 512;
                ulong cur = (ulong)st.st_size;
                if (size is { } want)
                {
                    if (want > cur)
                    {
                        if (readOnly) throw new UblkException("cannot extend read-only backing file " + path, Errno.EROFS);
                        SysException.Check(Libc.FTruncate(BufferedFd, (long)want), "ftruncate(" + path + ")");
                    }
                    Size = want;
                }
                else Size = cur;
            }
            else throw new UblkException("backing file " + path + " is not a regular file or block device", Errno.EINVAL);

            DirectFd = BufferedFd;
            if (direct != false)
            {
                int fd = Libc.Open(path, mode | Libc.O_CLOEXEC | Libc.O_DIRECT, 0);
                if (fd >= 0) { DirectFd = fd; Direct = true; }
                else if (direct == true) throw new UblkException("cannot open " + path + " with O_DIRECT: " + Errno.Name(Errno.Last), Errno.Last);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        if (DirectFd >= 0 && DirectFd != BufferedFd) Libc.Close(DirectFd);
        if (BufferedFd >= 0) Libc.Close(BufferedFd);
        DirectFd = BufferedFd = -1;
    }
}

/// <summary>
/// file:PATH — every request becomes SQEs on the queue's own io_uring, so one queue keeps many requests in
/// flight. READ/WRITE go to the O_DIRECT fd when there is one; a request the direct path refuses (EINVAL:
/// misaligned for this file system) is retried on the buffered fd. FUA → RWF_DSYNC, FLUSH → fdatasync,
/// DISCARD → punch hole, WRITE_ZEROES → zero range (punch hole, then plain zero writes, where refused).
/// </summary>
public struct FileBackend(FileTarget target) : IBackend
{
    // Fixed-file slots: the queue registers [/dev/ublkcN, direct fd, buffered fd].
    private static readonly int DirectSlot = UblkQueue.FileIndex(0);
    private static readonly int BufferedSlot = UblkQueue.FileIndex(1);
    private const byte SubRw = 0, SubFsync = 1, SubFalloc = 2, SubZeroWrite = 3;

    private readonly FileTarget _target = target;
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

    public static int[] Files(FileTarget t) => [t.DirectFd, t.BufferedFd];

    public void Attach(UblkQueue queue) => _io = new IoState[queue.Depth];

    public int Submit(UblkQueue queue, ushort tag, in ublksrv_io_desc iod)
    {
        ref IoState s = ref _io[tag];
        s.Offset = iod.start_sector << 9;
        s.Length = iod.nr_sectors << 9;
        s.Done = 0;
        s.Op = iod.Op;
        s.Fua = (iod.op_flags & UBLK_IO_F_FUA) != 0;
        s.Buffered = !_target.Direct;
        // A FLUSH carries no range (its start sector is whatever the block layer left there): check the others only.
        if (s.Op != UBLK_IO_OP_FLUSH && (s.Offset > _target.Size || s.Length > _target.Size - s.Offset)) return -Errno.EINVAL;
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
        ref io_uring_sqe sqe = ref queue.GetTargetSqe(tag, SubRw);
        ulong addr = queue.BufferAddress(tag) + s.Done;
        int slot = s.Buffered ? BufferedSlot : DirectSlot;
        byte op = s.Op == UBLK_IO_OP_READ
            ? (queue.FixedBuffers ? IORING_OP_READ_FIXED : IORING_OP_READ)
            : (queue.FixedBuffers ? IORING_OP_WRITE_FIXED : IORING_OP_WRITE);
        IoUring.PrepRw(ref sqe, op, slot, addr, s.Length - s.Done, s.Offset + s.Done);
        if (queue.FixedBuffers) sqe.buf_index = tag;      // tag t's buffer is registered buffer t
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
        uint chunk = Math.Min(queue.MaxIoBytes, s.Length - s.Done);
        queue.Buffer(tag, (int)chunk).Clear();
        ref io_uring_sqe sqe = ref queue.GetTargetSqe(tag, SubZeroWrite);
        IoUring.PrepWrite(ref sqe, s.Buffered ? BufferedSlot : DirectSlot, queue.BufferAddress(tag), chunk, s.Offset + s.Done);
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
                    queue.Buffer(tag, (int)s.Length).Slice((int)s.Done).Clear(); // past EOF reads as zeros
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

public sealed class FileSpec(FileTarget target) : LeafSpec<FileBackend>
{
    public FileTarget Target { get; } = target;
    public override string Describe() => "file:" + Target.Path + " (" + Target.Size + " bytes" + (Target.Direct ? ", O_DIRECT" : ", buffered") + ")";

    protected override FileBackend Make() => new(Target);
    protected override int[] Files => FileBackend.Files(Target);

    public override BackendCaps Caps => new()
        {
            Size = Target.Size,
            Discard = true,
            WriteZeroes = true,
            VolatileCache = true,
            DiscardGranularity = 4096,
            MinBlockSize = Target.IsBlockDevice && Target.Direct ? Target.LogicalBlockSize : 512,
        };

    public override void Dispose() => Target.Dispose();
}
