using System.Runtime.InteropServices;

namespace Ublk.Aot.Abi;

// io_uring UAPI (linux/io_uring.h). Names mirror the header so they can be grepped there;
// every size, offset and value here is compared with the C compiler's view of the newest
// header by Ublk.Aot.Tests/Abi/AbiLayoutTests.

[StructLayout(LayoutKind.Sequential, Size = 40)]
public struct io_sqring_offsets
{
    public uint head;
    public uint tail;
    public uint ring_mask;
    public uint ring_entries;
    public uint flags;
    public uint dropped;
    public uint array;
    public uint resv1;
    public ulong user_addr;
}

[StructLayout(LayoutKind.Sequential, Size = 40)]
public struct io_cqring_offsets
{
    public uint head;
    public uint tail;
    public uint ring_mask;
    public uint ring_entries;
    public uint overflow;
    public uint cqes;
    public uint flags;
    public uint resv1;
    public ulong user_addr;
}

[StructLayout(LayoutKind.Sequential, Size = 120)]
public unsafe struct io_uring_params
{
    public uint sq_entries;
    public uint cq_entries;
    public uint flags;
    public uint sq_thread_cpu;
    public uint sq_thread_idle;
    public uint features;
    public uint wq_fd;
    public fixed uint resv[3];
    public io_sqring_offsets sq_off;
    public io_cqring_offsets cq_off;
}

/// <summary>A 64-byte SQE. In a SQE128 ring each slot is 128 bytes and <see cref="cmd"/> runs on for 80 bytes.</summary>
[StructLayout(LayoutKind.Explicit, Size = 64)]
public unsafe struct io_uring_sqe
{
    [FieldOffset(0)] public byte opcode;
    [FieldOffset(1)] public byte flags;
    [FieldOffset(2)] public ushort ioprio;
    [FieldOffset(4)] public int fd;
    [FieldOffset(8)] public ulong off;
    [FieldOffset(8)] public ulong addr2;
    [FieldOffset(8)] public uint cmd_op;
    [FieldOffset(12)] public uint __pad1;
    [FieldOffset(16)] public ulong addr;
    [FieldOffset(24)] public uint len;
    [FieldOffset(28)] public uint rw_flags;
    [FieldOffset(28)] public uint fsync_flags;
    [FieldOffset(28)] public uint timeout_flags;
    [FieldOffset(28)] public uint uring_cmd_flags;
    [FieldOffset(28)] public uint nop_flags;
    [FieldOffset(28)] public uint msg_flags;
    [FieldOffset(32)] public ulong user_data;
    [FieldOffset(40)] public ushort buf_index;
    [FieldOffset(42)] public ushort personality;
    [FieldOffset(44)] public int splice_fd_in;
    [FieldOffset(44)] public uint file_index;
    [FieldOffset(48)] public ulong addr3;
    [FieldOffset(56)] public ulong __pad2;
    /// <summary>Start of the command payload of IORING_OP_URING_CMD (16 bytes in SQE64, 80 in SQE128).</summary>
    [FieldOffset(48)] public fixed byte cmd[16];
}

[StructLayout(LayoutKind.Sequential, Size = 16)]
public struct io_uring_cqe
{
    public ulong user_data;
    public int res;
    public uint flags;
}

[StructLayout(LayoutKind.Sequential, Size = 24)]
public struct io_uring_getevents_arg
{
    public ulong sigmask;
    public uint sigmask_sz;
    public uint min_wait_usec;
    public ulong ts;
}

[StructLayout(LayoutKind.Sequential, Size = 16)]
public struct __kernel_timespec
{
    public long tv_sec;
    public long tv_nsec;
}

[StructLayout(LayoutKind.Sequential, Size = 16)]
public struct iovec
{
    public nint iov_base;
    public nuint iov_len;
}

/// <summary>IORING_REGISTER_BUFFERS2's argument: with IORING_RSRC_REGISTER_SPARSE, <c>nr</c> empty slots (data = 0).</summary>
[StructLayout(LayoutKind.Sequential, Size = 32)]
public struct io_uring_rsrc_register
{
    public uint nr;
    public uint flags;
    public ulong resv2;
    public ulong data;
    public ulong tags;
}

public static class IoUringConst
{
    public const int SQE_SIZE = 64;
    public const int SQE128_SIZE = 128;
    public const int URING_CMD_PAYLOAD_SQE64 = 16;
    public const int URING_CMD_PAYLOAD_SQE128 = 80;

    // io_uring_sqe.flags
    public const byte IOSQE_FIXED_FILE = 1 << 0;
    public const byte IOSQE_IO_DRAIN = 1 << 1;
    public const byte IOSQE_IO_LINK = 1 << 2;
    public const byte IOSQE_IO_HARDLINK = 1 << 3;
    public const byte IOSQE_ASYNC = 1 << 4;
    public const byte IOSQE_BUFFER_SELECT = 1 << 5;
    public const byte IOSQE_CQE_SKIP_SUCCESS = 1 << 6;

    // io_uring_setup flags
    public const uint IORING_SETUP_IOPOLL = 1u << 0;
    public const uint IORING_SETUP_SQPOLL = 1u << 1;
    public const uint IORING_SETUP_SQ_AFF = 1u << 2;
    public const uint IORING_SETUP_CQSIZE = 1u << 3;
    public const uint IORING_SETUP_CLAMP = 1u << 4;
    public const uint IORING_SETUP_ATTACH_WQ = 1u << 5;
    public const uint IORING_SETUP_R_DISABLED = 1u << 6;
    public const uint IORING_SETUP_SUBMIT_ALL = 1u << 7;
    public const uint IORING_SETUP_COOP_TASKRUN = 1u << 8;
    public const uint IORING_SETUP_TASKRUN_FLAG = 1u << 9;
    public const uint IORING_SETUP_SQE128 = 1u << 10;
    public const uint IORING_SETUP_CQE32 = 1u << 11;
    public const uint IORING_SETUP_SINGLE_ISSUER = 1u << 12;
    public const uint IORING_SETUP_DEFER_TASKRUN = 1u << 13;
    public const uint IORING_SETUP_NO_MMAP = 1u << 14;
    public const uint IORING_SETUP_REGISTERED_FD_ONLY = 1u << 15;
    public const uint IORING_SETUP_NO_SQARRAY = 1u << 16;

    // opcodes (enum io_uring_op)
    public const byte IORING_OP_NOP = 0;
    public const byte IORING_OP_READV = 1;
    public const byte IORING_OP_WRITEV = 2;
    public const byte IORING_OP_FSYNC = 3;
    public const byte IORING_OP_READ_FIXED = 4;
    public const byte IORING_OP_WRITE_FIXED = 5;
    public const byte IORING_OP_POLL_ADD = 6;
    public const byte IORING_OP_SENDMSG = 9;
    public const byte IORING_OP_TIMEOUT = 11;
    public const byte IORING_OP_ASYNC_CANCEL = 14;
    public const byte IORING_OP_FALLOCATE = 17;
    public const byte IORING_OP_READ = 22;
    public const byte IORING_OP_WRITE = 23;
    public const byte IORING_OP_RECV = 27;
    public const byte IORING_OP_URING_CMD = 46;

    public const uint IORING_FSYNC_DATASYNC = 1u << 0;
    public const uint IORING_URING_CMD_FIXED = 1u << 0;

    // io_uring_enter flags
    public const uint IORING_ENTER_GETEVENTS = 1u << 0;
    public const uint IORING_ENTER_SQ_WAKEUP = 1u << 1;
    public const uint IORING_ENTER_SQ_WAIT = 1u << 2;
    public const uint IORING_ENTER_EXT_ARG = 1u << 3;
    public const uint IORING_ENTER_REGISTERED_RING = 1u << 4;

    // sq_ring->flags
    public const uint IORING_SQ_NEED_WAKEUP = 1u << 0;
    public const uint IORING_SQ_CQ_OVERFLOW = 1u << 1;
    public const uint IORING_SQ_TASKRUN = 1u << 2;

    // io_uring_params.features
    public const uint IORING_FEAT_SINGLE_MMAP = 1u << 0;
    public const uint IORING_FEAT_NODROP = 1u << 1;
    public const uint IORING_FEAT_SUBMIT_STABLE = 1u << 2;
    public const uint IORING_FEAT_EXT_ARG = 1u << 8;

    // mmap offsets
    public const long IORING_OFF_SQ_RING = 0;
    public const long IORING_OFF_CQ_RING = 0x8000000;
    public const long IORING_OFF_SQES = 0x10000000;

    // io_uring_register opcodes
    public const uint IORING_REGISTER_BUFFERS = 0;
    public const uint IORING_UNREGISTER_BUFFERS = 1;
    public const uint IORING_REGISTER_FILES = 2;
    public const uint IORING_UNREGISTER_FILES = 3;
    public const uint IORING_REGISTER_BUFFERS2 = 15;
    public const uint IORING_RSRC_REGISTER_SPARSE = 1u << 0;

    // fallocate modes (linux/falloc.h) and per-I/O flags (linux/fs.h)
    public const int FALLOC_FL_KEEP_SIZE = 0x01;
    public const int FALLOC_FL_PUNCH_HOLE = 0x02;
    public const int FALLOC_FL_ZERO_RANGE = 0x10;
    public const uint RWF_DSYNC = 0x00000002;
    public const uint RWF_SYNC = 0x00000004;
}
