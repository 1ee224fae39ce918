using System;
using Ublk.Aot.Abi;
using Ublk.Aot.Ring;

namespace Ublk.Aot.Ublk;

/// <summary>The shape of one queue, as the kernel granted it, and the io mode the device was created with.</summary>
public readonly record struct QueueGeometry(uint DeviceId, ushort QueueId, int Depth, uint MaxIoBytes, IoMode Mode = IoMode.Copy);

/// <summary>
/// How the buffers of a device are set up (from <see cref="DeviceOptions"/>). <paramref name="Mode"/> is the device's
/// io mode (never Auto); <paramref name="Bounce"/>: user copy through per-tag buffers (the backend asked for them);
/// <paramref name="TestBadAutoIndex"/>: test hook, every fourth tag gets an AUTO_BUF_REG index the kernel must refuse.
/// </summary>
public readonly record struct BufferOptions(TimeSpan IdleRelease, bool Fixed, bool Huge, IoMode Mode = IoMode.Copy,
    bool Bounce = false, bool TestBadAutoIndex = false);

/// <summary>
/// How request data meets user memory on one queue: chosen when the device is created, one instance per queue,
/// set up and torn down on the queue's own thread (so first touches land on its CPU). The copy mode's per-tag
/// buffers are one strategy (<see cref="TagBuffers"/>); a data mode without them (user copy, zero copy) is another
/// subclass, not a flag inside the queue loop.
/// Nothing here is called per I/O through a virtual call: the queue reads <see cref="CommandAddress"/> once per tag
/// at set-up into a table, and backends reach a concrete strategy (<see cref="UblkQueue.Buffers"/>) directly.
/// </summary>
public abstract class BufferStrategy : IDisposable
{
    /// <summary>Maps (and registers with <paramref name="ring"/>, if asked) the memory. Null ring: no kernel (host tests).</summary>
    public abstract void SetUp(in QueueGeometry geometry, IoUring? ring);

    /// <summary>What the FETCH/COMMIT commands of <paramref name="tag"/> carry in ublksrv_io_cmd.addr. Valid after SetUp.</summary>
    public abstract ulong CommandAddress(ushort tag);

    /// <summary>What the FETCH/COMMIT SQEs of <paramref name="tag"/> carry in sqe->addr (AUTO_BUF_REG's ublk_auto_buf_reg); 0 otherwise.</summary>
    public virtual ulong SqeAddress(ushort tag) => 0;

    /// <summary>
    /// How long a queue must go without a request before <see cref="ReleaseIdle"/> is worth calling;
    /// <see cref="TimeSpan.Zero"/>: never.
    /// </summary>
    public virtual TimeSpan IdleRelease => TimeSpan.Zero;

    /// <summary>
    /// Called on the queue thread when the queue has served nothing for <see cref="IdleRelease"/> and nothing is at
    /// the backend, once per idle spell. Returns true if it gave memory back.
    /// </summary>
    public virtual bool ReleaseIdle() => false;

    /// <summary>Unmaps what SetUp mapped. Idempotent.</summary>
    public abstract void Dispose();

    /// <summary>The strategy for a device with these options: tag buffers (copy; user copy with bounce), none (user
    /// copy), or a table of request-buffer slots (zero copy, auto buffer registration).</summary>
    public static BufferStrategy Create(BufferOptions options) => options.Mode switch
    {
        IoMode.UserCopy => options.Bounce ? new TagBuffers(options, carriesAddress: false) : new NoBuffers(),
        IoMode.ZeroCopy or IoMode.AutoBufReg => new RequestBufferTable(options),
        _ => new TagBuffers(options),
    };
}

/// <summary>User copy without bounce buffers: the backend copies between its own memory and /dev/ublkcN.</summary>
public sealed class NoBuffers : BufferStrategy
{
    public override void SetUp(in QueueGeometry geometry, IoUring? ring) { }
    public override ulong CommandAddress(ushort tag) => 0;
    public override void Dispose() { }
}

/// <summary>
/// The zero-copy modes: no user memory for data, but a sparse fixed-buffer table of one slot per tag on the queue's
/// ring; slot t holds tag t's request pages while the request is served (installed by REGISTER_IO_BUF, or by the
/// kernel itself with AUTO_BUF_REG, whose index and FALLBACK flag travel in the FETCH/COMMIT SQE's addr).
/// </summary>
public sealed class RequestBufferTable(BufferOptions options) : BufferStrategy
{
    /// <summary>An index no table has (kublk's null target uses the same to force the fallback).</summary>
    public const ushort InvalidIndex = ushort.MaxValue;

    private ulong[] _sqeAddr = [];

    public BufferOptions Options { get; } = options;

    public override void SetUp(in QueueGeometry g, IoUring? ring)
    {
        ring?.RegisterSparseBuffers((uint)g.Depth);
        _sqeAddr = new ulong[g.Depth];
        if (Options.Mode != IoMode.AutoBufReg) return;
        for (int t = 0; t < g.Depth; t++)
        {
            // struct ublk_auto_buf_reg packed into sqe->addr: index in bits 0-15, flags in 16-23 (linux/ublk_cmd.h,
            // ublk_auto_buf_reg_to_sqe_addr). FALLBACK: a request the kernel cannot register is still handed over,
            // flagged UBLK_IO_F_NEED_REG_BUF, instead of failing.
            ushort index = Options.TestBadAutoIndex && t % 4 == 3 ? InvalidIndex : (ushort)t;
            _sqeAddr[t] = index | (ulong)UblkConst.UBLK_AUTO_BUF_REG_FALLBACK << 16;
        }
    }

    /// <summary>The fixed-buffer slot of tag <paramref name="tag"/>'s request pages.</summary>
    public static ushort Index(ushort tag) => tag;

    public override ulong CommandAddress(ushort tag) => 0;
    public override ulong SqeAddress(ushort tag) => _sqeAddr[tag];

    /// <summary>The ring's exit drops the table and anything still installed in it.</summary>
    public override void Dispose() { }
}
