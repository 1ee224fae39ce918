using System.Runtime.InteropServices;

namespace Ublk.Aot.Abi;

// ublk UAPI (linux/ublk_cmd.h), taken from the newest header (the newest Debian linux-libc-dev,
// see scripts/uapi-headers.sh: 7.3.4 from trixie-backports today).
// Names mirror the header; AbiLayoutTests compares every size, offset and constant with it.

/// <summary>Control command, carried in sqe->cmd of a SQE128 IORING_OP_URING_CMD on /dev/ublk-control.</summary>
[StructLayout(LayoutKind.Sequential, Size = 32)]
public struct ublksrv_ctrl_cmd
{
    public uint dev_id;
    public ushort queue_id;
    public ushort len;
    public ulong addr;
    public ulong data0; // __u64 data[1]
    public ushort dev_path_len;
    public ushort pad;
    public uint reserved;
}

[StructLayout(LayoutKind.Sequential, Size = 64)]
public struct ublksrv_ctrl_dev_info
{
    public ushort nr_hw_queues;
    public ushort queue_depth;
    public ushort state;
    public ushort io_desc_size; // size of one ublksrv_io_desc when UBLK_F_IO_DESC_SIZE (7.3+; pad0 before)
    public uint max_io_buf_bytes;
    public uint dev_id;
    public int ublksrv_pid;
    public uint pad1;
    public ulong flags;
    public ulong ublksrv_flags;
    public uint owner_uid;
    public uint owner_gid;
    public ulong reserved1;
    public ulong reserved2;
}

/// <summary>Per-tag I/O descriptor in the array the server mmaps from /dev/ublkcN (read-only).</summary>
[StructLayout(LayoutKind.Sequential, Size = 24)]
public struct ublksrv_io_desc
{
    public uint op_flags;     // op: bits 0-7, flags: bits 8-31
    public uint nr_sectors;   // union with nr_zones
    public ulong start_sector;
    public ulong addr;

    public readonly byte Op => (byte)(op_flags & 0xff);
    public readonly uint Flags => op_flags >> 8;
}

/// <summary>I/O command, carried in the 16-byte sqe->cmd of a SQE64 IORING_OP_URING_CMD on /dev/ublkcN.</summary>
[StructLayout(LayoutKind.Sequential, Size = 16)]
public struct ublksrv_io_cmd
{
    public ushort q_id;
    public ushort tag;
    public int result;
    public ulong addr;        // union with zone_append_lba
}

[StructLayout(LayoutKind.Sequential, Size = 24)]
public struct ublk_shmem_buf_reg
{
    public ulong addr;
    public ulong len;
    public uint flags;
    public uint reserved;
}

[StructLayout(LayoutKind.Sequential, Size = 8)]
public struct ublk_auto_buf_reg
{
    public ushort index;
    public byte flags;
    public byte reserved0;
    public uint reserved1;
}

[StructLayout(LayoutKind.Sequential, Size = 8)]
public struct ublk_elem_header
{
    public ushort tag;
    public ushort buf_index;
    public int result;
}

[StructLayout(LayoutKind.Sequential, Size = 16)]
public struct ublk_batch_io
{
    public ushort q_id;
    public ushort flags;
    public ushort nr_elem;
    public byte elem_bytes;
    public byte reserved;
    public ulong reserved2;
}

[StructLayout(LayoutKind.Sequential, Size = 32)]
public struct ublk_param_basic
{
    public uint attrs;
    public byte logical_bs_shift;
    public byte physical_bs_shift;
    public byte io_opt_shift;
    public byte io_min_shift;
    public uint max_sectors;
    public uint chunk_sectors;
    public ulong dev_sectors;
    public ulong virt_boundary_mask;
}

[StructLayout(LayoutKind.Sequential, Size = 20)]
public struct ublk_param_discard
{
    public uint discard_alignment;
    public uint discard_granularity;
    public uint max_discard_sectors;
    public uint max_write_zeroes_sectors;
    public ushort max_discard_segments;
    public ushort reserved0;
}

[StructLayout(LayoutKind.Sequential, Size = 16)]
public struct ublk_param_devt
{
    public uint char_major;
    public uint char_minor;
    public uint disk_major;
    public uint disk_minor;
}

[StructLayout(LayoutKind.Sequential, Size = 32)]
public unsafe struct ublk_param_zoned
{
    public uint max_open_zones;
    public uint max_active_zones;
    public uint max_zone_append_sectors;
    public fixed byte reserved[20];
}

[StructLayout(LayoutKind.Sequential, Size = 8)]
public unsafe struct ublk_param_dma_align
{
    public uint alignment;
    public fixed byte pad[4];
}

[StructLayout(LayoutKind.Sequential, Size = 16)]
public unsafe struct ublk_param_segment
{
    public ulong seg_boundary_mask;
    public uint max_segment_size;
    public ushort max_segments;
    public fixed byte pad[2];
}

[StructLayout(LayoutKind.Sequential, Size = 16)]
public unsafe struct ublk_param_integrity
{
    public uint flags;
    public ushort max_integrity_segments;
    public byte interval_exp;
    public byte metadata_size;
    public byte pi_offset;
    public byte csum_type;
    public byte tag_size;
    public fixed byte pad[5];
}

[StructLayout(LayoutKind.Sequential, Size = 152)]
public struct ublk_params
{
    public uint len;
    public uint types;
    public ublk_param_basic basic;
    public ublk_param_discard discard;
    public ublk_param_devt devt;
    public ublk_param_zoned zoned;
    public ublk_param_dma_align dma;
    public ublk_param_segment seg;
    public ublk_param_integrity integrity;
}

public static class UblkConst
{
    // _IOC encoding (asm-generic/ioctl.h): dir << 30 | size << 16 | type << 8 | nr.
    private const uint IOC_WRITE = 1, IOC_READ = 2;
    private const uint U = 'u';
    private const uint CtrlCmdSize = 32, IoCmdSize = 16, BatchIoSize = 16;
    private const uint IOR_CTRL = (IOC_READ << 30) | (CtrlCmdSize << 16) | (U << 8);
    private const uint IOWR_CTRL = ((IOC_READ | IOC_WRITE) << 30) | (CtrlCmdSize << 16) | (U << 8);
    private const uint IOWR_IO = ((IOC_READ | IOC_WRITE) << 30) | (IoCmdSize << 16) | (U << 8);
    private const uint IOWR_BATCH = ((IOC_READ | IOC_WRITE) << 30) | (BatchIoSize << 16) | (U << 8);

    // Legacy control command numbers (also the _IOC nr of the encoded ones).
    public const uint UBLK_CMD_GET_QUEUE_AFFINITY = 0x01;
    public const uint UBLK_CMD_GET_DEV_INFO = 0x02;
    public const uint UBLK_CMD_ADD_DEV = 0x04;
    public const uint UBLK_CMD_DEL_DEV = 0x05;
    public const uint UBLK_CMD_START_DEV = 0x06;
    public const uint UBLK_CMD_STOP_DEV = 0x07;
    public const uint UBLK_CMD_SET_PARAMS = 0x08;
    public const uint UBLK_CMD_GET_PARAMS = 0x09;
    public const uint UBLK_CMD_START_USER_RECOVERY = 0x10;
    public const uint UBLK_CMD_END_USER_RECOVERY = 0x11;
    public const uint UBLK_CMD_GET_DEV_INFO2 = 0x12;

    public const uint UBLK_U_CMD_GET_QUEUE_AFFINITY = IOR_CTRL | UBLK_CMD_GET_QUEUE_AFFINITY;
    public const uint UBLK_U_CMD_GET_DEV_INFO = IOR_CTRL | UBLK_CMD_GET_DEV_INFO;
    public const uint UBLK_U_CMD_ADD_DEV = IOWR_CTRL | UBLK_CMD_ADD_DEV;
    public const uint UBLK_U_CMD_DEL_DEV = IOWR_CTRL | UBLK_CMD_DEL_DEV;
    public const uint UBLK_U_CMD_START_DEV = IOWR_CTRL | UBLK_CMD_START_DEV;
    public const uint UBLK_U_CMD_STOP_DEV = IOWR_CTRL | UBLK_CMD_STOP_DEV;
    public const uint UBLK_U_CMD_SET_PARAMS = IOWR_CTRL | UBLK_CMD_SET_PARAMS;
    public const uint UBLK_U_CMD_GET_PARAMS = IOR_CTRL | UBLK_CMD_GET_PARAMS;
    public const uint UBLK_U_CMD_START_USER_RECOVERY = IOWR_CTRL | UBLK_CMD_START_USER_RECOVERY;
    public const uint UBLK_U_CMD_END_USER_RECOVERY = IOWR_CTRL | UBLK_CMD_END_USER_RECOVERY;
    public const uint UBLK_U_CMD_GET_DEV_INFO2 = IOR_CTRL | UBLK_CMD_GET_DEV_INFO2;
    public const uint UBLK_U_CMD_GET_FEATURES = IOR_CTRL | 0x13;
    public const uint UBLK_U_CMD_DEL_DEV_ASYNC = IOR_CTRL | 0x14;
    public const uint UBLK_U_CMD_UPDATE_SIZE = IOWR_CTRL | 0x15;
    public const uint UBLK_U_CMD_QUIESCE_DEV = IOWR_CTRL | 0x16;
    public const uint UBLK_U_CMD_TRY_STOP_DEV = IOWR_CTRL | 0x17;
    public const uint UBLK_U_CMD_REG_BUF = IOWR_CTRL | 0x18;
    public const uint UBLK_U_CMD_UNREG_BUF = IOWR_CTRL | 0x19;

    public const uint UBLK_SHMEM_BUF_READ_ONLY = 1u << 0;
    public const int UBLK_FEATURES_LEN = 8;

    // I/O commands.
    public const uint UBLK_IO_FETCH_REQ = 0x20;
    public const uint UBLK_IO_COMMIT_AND_FETCH_REQ = 0x21;
    public const uint UBLK_IO_NEED_GET_DATA = 0x22;
    public const uint UBLK_U_IO_FETCH_REQ = IOWR_IO | UBLK_IO_FETCH_REQ;
    public const uint UBLK_U_IO_COMMIT_AND_FETCH_REQ = IOWR_IO | UBLK_IO_COMMIT_AND_FETCH_REQ;
    public const uint UBLK_U_IO_NEED_GET_DATA = IOWR_IO | UBLK_IO_NEED_GET_DATA;
    public const uint UBLK_U_IO_REGISTER_IO_BUF = IOWR_IO | 0x23;
    public const uint UBLK_U_IO_UNREGISTER_IO_BUF = IOWR_IO | 0x24;
    public const uint UBLK_U_IO_PREP_IO_CMDS = IOWR_BATCH | 0x25;
    public const uint UBLK_U_IO_COMMIT_IO_CMDS = IOWR_BATCH | 0x26;
    public const uint UBLK_U_IO_FETCH_IO_CMDS = IOWR_BATCH | 0x27;

    // Results of an I/O command's CQE.
    public const int UBLK_IO_RES_OK = 0;
    public const int UBLK_IO_RES_NEED_GET_DATA = 1;
    public const int UBLK_IO_RES_ABORT = -19; // -ENODEV

    public const long UBLKSRV_CMD_BUF_OFFSET = 0;
    public const long UBLKSRV_IO_BUF_OFFSET = 0x80000000;
    public const int UBLK_MAX_QUEUE_DEPTH = 4096;
    public const int UBLK_IO_BUF_OFF = 0;
    public const int UBLK_IO_BUF_BITS = 25;
    public const ulong UBLK_IO_BUF_BITS_MASK = (1UL << UBLK_IO_BUF_BITS) - 1;
    public const int UBLK_TAG_OFF = UBLK_IO_BUF_BITS;
    public const int UBLK_TAG_BITS = 16;
    public const ulong UBLK_TAG_BITS_MASK = (1UL << UBLK_TAG_BITS) - 1;
    public const int UBLK_QID_OFF = UBLK_TAG_OFF + UBLK_TAG_BITS;
    public const int UBLK_QID_BITS = 12;
    public const ulong UBLK_QID_BITS_MASK = (1UL << UBLK_QID_BITS) - 1;
    public const uint UBLK_MAX_NR_QUEUES = 1u << UBLK_QID_BITS;
    public const int UBLKSRV_IO_BUF_TOTAL_BITS = UBLK_QID_OFF + UBLK_QID_BITS;
    public const ulong UBLKSRV_IO_BUF_TOTAL_SIZE = 1UL << UBLKSRV_IO_BUF_TOTAL_BITS;
    public const int UBLK_INTEGRITY_FLAG_OFF = 62;
    public const ulong UBLKSRV_IO_INTEGRITY_FLAG = 1UL << UBLK_INTEGRITY_FLAG_OFF;

    // Feature flags (ublksrv_ctrl_dev_info.flags; GET_FEATURES).
    public const ulong UBLK_F_SUPPORT_ZERO_COPY = 1UL << 0;
    public const ulong UBLK_F_URING_CMD_COMP_IN_TASK = 1UL << 1;
    public const ulong UBLK_F_NEED_GET_DATA = 1UL << 2;
    public const ulong UBLK_F_USER_RECOVERY = 1UL << 3;
    public const ulong UBLK_F_USER_RECOVERY_REISSUE = 1UL << 4;
    public const ulong UBLK_F_UNPRIVILEGED_DEV = 1UL << 5;
    public const ulong UBLK_F_CMD_IOCTL_ENCODE = 1UL << 6;
    public const ulong UBLK_F_USER_COPY = 1UL << 7;
    public const ulong UBLK_F_ZONED = 1UL << 8;
    public const ulong UBLK_F_USER_RECOVERY_FAIL_IO = 1UL << 9;
    public const ulong UBLK_F_UPDATE_SIZE = 1UL << 10;
    public const ulong UBLK_F_AUTO_BUF_REG = 1UL << 11;
    public const ulong UBLK_F_QUIESCE = 1UL << 12;
    public const ulong UBLK_F_PER_IO_DAEMON = 1UL << 13;
    public const ulong UBLK_F_BUF_REG_OFF_DAEMON = 1UL << 14;
    public const ulong UBLK_F_BATCH_IO = 1UL << 15;
    public const ulong UBLK_F_INTEGRITY = 1UL << 16;
    public const ulong UBLK_F_SAFE_STOP_DEV = 1UL << 17;
    public const ulong UBLK_F_NO_AUTO_PART_SCAN = 1UL << 18;
    public const ulong UBLK_F_SHMEM_ZC = 1UL << 19;
    public const ulong UBLK_F_IO_DESC_SIZE = 1UL << 20; // ublksrv_io_desc size is ublksrv_ctrl_dev_info.io_desc_size

    // Device states.
    public const ushort UBLK_S_DEV_DEAD = 0;
    public const ushort UBLK_S_DEV_LIVE = 1;
    public const ushort UBLK_S_DEV_QUIESCED = 2;
    public const ushort UBLK_S_DEV_FAIL_IO = 3;

    // I/O ops and flags (ublksrv_io_desc.op_flags).
    public const byte UBLK_IO_OP_READ = 0;
    public const byte UBLK_IO_OP_WRITE = 1;
    public const byte UBLK_IO_OP_FLUSH = 2;
    public const byte UBLK_IO_OP_DISCARD = 3;
    public const byte UBLK_IO_OP_WRITE_SAME = 4;
    public const byte UBLK_IO_OP_WRITE_ZEROES = 5;
    public const byte UBLK_IO_OP_ZONE_OPEN = 10;
    public const byte UBLK_IO_OP_ZONE_CLOSE = 11;
    public const byte UBLK_IO_OP_ZONE_FINISH = 12;
    public const byte UBLK_IO_OP_ZONE_APPEND = 13;
    public const byte UBLK_IO_OP_ZONE_RESET_ALL = 14;
    public const byte UBLK_IO_OP_ZONE_RESET = 15;
    public const byte UBLK_IO_OP_REPORT_ZONES = 18;

    public const uint UBLK_IO_F_FAILFAST_DEV = 1u << 8;
    public const uint UBLK_IO_F_FAILFAST_TRANSPORT = 1u << 9;
    public const uint UBLK_IO_F_FAILFAST_DRIVER = 1u << 10;
    public const uint UBLK_IO_F_META = 1u << 11;
    public const uint UBLK_IO_F_FUA = 1u << 13;
    public const uint UBLK_IO_F_NOUNMAP = 1u << 15;
    public const uint UBLK_IO_F_SWAP = 1u << 16;
    public const uint UBLK_IO_F_NEED_REG_BUF = 1u << 17;
    public const uint UBLK_IO_F_INTEGRITY = 1u << 18;
    public const uint UBLK_IO_F_SHMEM_ZC = 1u << 19;

    public const uint UBLK_AUTO_BUF_REG_FALLBACK = 1u << 0;
    public const uint UBLK_AUTO_BUF_REG_F_MASK = UBLK_AUTO_BUF_REG_FALLBACK;

    public const ushort UBLK_BATCH_F_HAS_ZONE_LBA = 1 << 0;
    public const ushort UBLK_BATCH_F_HAS_BUF_ADDR = 1 << 1;
    public const ushort UBLK_BATCH_F_AUTO_BUF_REG_FALLBACK = 1 << 2;

    // ublk_param_basic.attrs
    public const uint UBLK_ATTR_READ_ONLY = 1u << 0;
    public const uint UBLK_ATTR_ROTATIONAL = 1u << 1;
    public const uint UBLK_ATTR_VOLATILE_CACHE = 1u << 2;
    public const uint UBLK_ATTR_FUA = 1u << 3;

    public const int UBLK_MIN_SEGMENT_SIZE = 4096;

    // ublk_params.types
    public const uint UBLK_PARAM_TYPE_BASIC = 1u << 0;
    public const uint UBLK_PARAM_TYPE_DISCARD = 1u << 1;
    public const uint UBLK_PARAM_TYPE_DEVT = 1u << 2;
    public const uint UBLK_PARAM_TYPE_ZONED = 1u << 3;
    public const uint UBLK_PARAM_TYPE_DMA_ALIGN = 1u << 4;
    public const uint UBLK_PARAM_TYPE_SEGMENT = 1u << 5;
    public const uint UBLK_PARAM_TYPE_INTEGRITY = 1u << 6;

    public const ulong UBLK_SHMEM_ZC_OFF_MASK = 0xffffffffUL;
    public const int UBLK_SHMEM_ZC_IDX_OFF = 32;
    public const ulong UBLK_SHMEM_ZC_IDX_MASK = 0xffffUL;

    /// <summary>Feature names, bit by bit, as in the header (UBLK_F_ prefix dropped).</summary>
    public static readonly string[] FeatureNames =
    [
        "SUPPORT_ZERO_COPY", "URING_CMD_COMP_IN_TASK", "NEED_GET_DATA", "USER_RECOVERY",
        "USER_RECOVERY_REISSUE", "UNPRIVILEGED_DEV", "CMD_IOCTL_ENCODE", "USER_COPY",
        "ZONED", "USER_RECOVERY_FAIL_IO", "UPDATE_SIZE", "AUTO_BUF_REG",
        "QUIESCE", "PER_IO_DAEMON", "BUF_REG_OFF_DAEMON", "BATCH_IO",
        "INTEGRITY", "SAFE_STOP_DEV", "NO_AUTO_PART_SCAN", "SHMEM_ZC",
        "IO_DESC_SIZE",
    ];

    public static string StateName(ushort state) => state switch
    {
        UBLK_S_DEV_DEAD => "DEAD",
        UBLK_S_DEV_LIVE => "LIVE",
        UBLK_S_DEV_QUIESCED => "QUIESCED",
        UBLK_S_DEV_FAIL_IO => "FAIL_IO",
        _ => "UNKNOWN",
    };
}
