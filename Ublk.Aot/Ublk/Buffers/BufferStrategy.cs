using System;
using Ublk.Aot.Ring;

namespace Ublk.Aot.Ublk;

/// <summary>The shape of one queue, as the kernel granted it.</summary>
public readonly record struct QueueGeometry(uint DeviceId, ushort QueueId, int Depth, uint MaxIoBytes);

/// <summary>How the per-tag buffers of a device are set up (from <see cref="DeviceOptions"/>).</summary>
public readonly record struct BufferOptions(TimeSpan IdleRelease, bool Fixed, bool Huge);

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

    /// <summary>The strategy for a device with these options (only the copy mode's tag buffers exist today).</summary>
    public static BufferStrategy Create(BufferOptions options) => new TagBuffers(options);
}
