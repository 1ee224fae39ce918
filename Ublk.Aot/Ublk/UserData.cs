using System.Runtime.CompilerServices;

namespace Ublk.Aot.Ublk;

/// <summary>What a queue's own SQE is for (the op field of a <see cref="UserData"/> without the target bit).</summary>
public enum QueueOp : byte
{
    /// <summary>UBLK_IO_FETCH_REQ: the tag's first command, parked in the kernel until a request arrives.</summary>
    Fetch = 0,
    /// <summary>UBLK_IO_COMMIT_AND_FETCH_REQ: the tag's result, and the next fetch.</summary>
    Commit = 1,
    /// <summary>The queue's idle timer (one IORING_OP_TIMEOUT, re-armed from its own CQE); tag unused.</summary>
    IdleTick = 2,
    /// <summary>UBLK_U_IO_REGISTER_IO_BUF of the tag's request pages (zero copy); a CQE only on failure.</summary>
    RegisterBuf = 3,
    /// <summary>UBLK_U_IO_UNREGISTER_IO_BUF of the tag's slot, before its commit; a CQE only on failure.</summary>
    UnregisterBuf = 4,
}

/// <summary>
/// The one codec of the 64-bit user_data of every SQE a queue submits, and so of every CQE its loop routes.
/// <code>
///   bit  63      target: set for an SQE a backend queued (its CQE goes to the backend's Complete)
///   bits 40-62   zero (reserved; see below)
///   bits 24-39   zero today; reserved for the queue id (see below)
///   bits 16-23   op: a <see cref="QueueOp"/> without the target bit, the backend's own sub-op with it
///   bits  0-15   tag (UBLK_MAX_QUEUE_DEPTH is 4096: 12 bits would do)
/// </code>
/// Room for what comes next, without moving a field:
/// - zero-copy buffer registration (REGISTER_IO_BUF / UNREGISTER_IO_BUF) adds <see cref="QueueOp"/> values; the
///   registration SQE and the backend's I/O on the same tag are told apart by op, not by a new field.
/// - per-I/O daemons (one thread serving tags of several queues) put the queue id in bits 24-39 through
///   <see cref="ForQueue"/>-style builders that take it; today every queue sees only its own CQEs.
/// - batch commands (PREP/COMMIT/FETCH_IO_CMDS carry many tags) carry a buffer-slot number in the tag field with a
///   batch <see cref="QueueOp"/>; the tags themselves travel in the command's element buffer, not in user_data.
/// The reserved bits are always zero, so no built value can equal the ring's internal
/// <c>IoUring.CancelUserData</c> (all ones).
/// </summary>
public readonly struct UserData
{
    private const int OpShift = 16;
    private const ulong TargetBit = 1UL << 63;

    public ulong Value { get; }

    public UserData(ulong value) => Value = value;

    /// <summary>An SQE of the queue itself (fetch, commit, idle tick) for <paramref name="tag"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong ForQueue(QueueOp op, ushort tag) => ((ulong)op << OpShift) | tag;

    /// <summary>An SQE a backend queued for <paramref name="tag"/>; its CQE brings <paramref name="subOp"/> back.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong ForTarget(byte subOp, ushort tag) => TargetBit | ((ulong)subOp << OpShift) | tag;

    public ushort Tag
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => (ushort)Value;
    }

    /// <summary>True for a backend's SQE (<see cref="ForTarget"/>).</summary>
    public bool IsTarget
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => (Value & TargetBit) != 0;
    }

    /// <summary>The backend's sub-op (meaningful when <see cref="IsTarget"/>).</summary>
    public byte SubOp
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => (byte)(Value >> OpShift);
    }

    /// <summary>The queue's op (meaningful when not <see cref="IsTarget"/>).</summary>
    public QueueOp Op
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => (QueueOp)(byte)(Value >> OpShift);
    }
}
