using Ublk.Aot.Abi;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Backends;

/// <summary>
/// A storage target, served by one copy per queue. Queues are generic over the backend struct, so every call
/// below is a direct (inlinable) call: no virtual dispatch per I/O. Shared state lives in classes the struct
/// references; per-queue state lives in the struct copy itself, set up in <see cref="Attach"/>.
/// Results follow the kernel's convention: bytes done (READ/WRITE) or 0, else -errno, or <see cref="Backend.Pending"/>.
/// </summary>
public interface IBackend
{
    /// <summary>Called on the queue thread once its ring exists, before any I/O.</summary>
    void Attach(UblkQueue queue);

    /// <summary>Handles one request. Return the result, or Pending after queueing SQEs with <see cref="UblkQueue.GetTargetSqe"/>.</summary>
    int Submit(UblkQueue queue, ushort tag, in ublksrv_io_desc iod);

    /// <summary>A CQE of an SQE this backend queued for <paramref name="tag"/>. Return the request's result, or Pending.</summary>
    int Complete(UblkQueue queue, ushort tag, byte subOp, int res);

    /// <summary>Called on the queue thread after its loop ended.</summary>
    void Detach(UblkQueue queue);
}

/// <summary>What a backend offers the block layer; turned into ublk_params by the device.</summary>
public struct BackendCaps
{
    public ulong Size;
    public bool Discard;
    public bool WriteZeroes;
    /// <summary>Writes may sit in a volatile cache: FLUSH and FUA matter (UBLK_ATTR_VOLATILE_CACHE | UBLK_ATTR_FUA).</summary>
    public bool VolatileCache;
    public bool ReadOnly;
    public bool Rotational;
    public uint DiscardGranularity;
    /// <summary>Smallest logical block size the backend can serve (e.g. 4096 for a 4K-sector device opened O_DIRECT).</summary>
    public uint MinBlockSize;
}

public static class Backend
{
    /// <summary>The request is in flight in the backend; its result comes through Complete.</summary>
    public const int Pending = int.MinValue;
}

/// <summary>Receives the concrete backend struct type from a <see cref="BackendSpec"/> (a generic visitor, no reflection).</summary>
public interface IBackendConsumer<TResult>
{
    /// <summary><paramref name="files"/>: fds each queue registers after /dev/ublkcN (see UblkQueue.FileIndex).</summary>
    TResult Use<TBackend>(TBackend backend, BackendCaps caps, int[] files) where TBackend : struct, IBackend;
}

/// <summary>A parsed --backend SPEC: owns the shared resources (files, memory) and builds the per-queue struct.</summary>
public abstract class BackendSpec : System.IDisposable
{
    public abstract string Describe();
    public abstract TResult Build<TResult>(IBackendConsumer<TResult> consumer);

    /// <summary>Builds this backend wrapped in a <see cref="FaultBackend{TInner}"/> (one level only: no generic recursion).</summary>
    public virtual TResult BuildWithFaults<TResult>(IBackendConsumer<TResult> consumer, FaultConfig config)
        => throw new Cli.UsageException("backend fault: cannot wrap " + Describe());

    public virtual void Dispose() { }
}

/// <summary>A spec that makes one concrete backend struct.</summary>
public abstract class LeafSpec<TBackend> : BackendSpec where TBackend : struct, IBackend
{
    public abstract BackendCaps Caps { get; }
    protected virtual int[] Files => [];
    protected abstract TBackend Make();

    public override TResult Build<TResult>(IBackendConsumer<TResult> consumer) => consumer.Use(Make(), Caps, Files);

    public override TResult BuildWithFaults<TResult>(IBackendConsumer<TResult> consumer, FaultConfig config)
        => consumer.Use(new FaultBackend<TBackend>(Make(), config), Caps, Files);
}
