using Ublk.Aot.Abi;

namespace Ublk.Aot.Ublk;

/// <summary>
/// The contract between a queue and the storage behind it (what kublk.h's ublk_tgt_ops is to kublk). One copy of
/// the backend struct serves each queue, and queues are generic over the struct, so every call below is a direct
/// (inlinable) call: no virtual dispatch per I/O. Shared state lives in classes the struct references; per-queue
/// state lives in the struct copy itself, set up in <see cref="Attach"/>. Every method runs on the queue's thread.
/// Results follow the kernel's convention: bytes done (READ/WRITE) or 0, else -errno, or <see cref="Backend.Pending"/>.
/// </summary>
public interface IBackend
{
    /// <summary>Required. Called on the queue thread once its ring and buffers exist, before any I/O.</summary>
    void Attach(UblkQueue queue);

    /// <summary>
    /// Required. Handles one request. Return the result, or <see cref="Backend.Pending"/> after queueing SQEs
    /// with <see cref="UblkQueue.GetTargetSqe"/>.
    /// </summary>
    int Submit(UblkQueue queue, ushort tag, in ublksrv_io_desc iod);

    /// <summary>
    /// Required if Submit ever returns Pending. A CQE of an SQE this backend queued for <paramref name="tag"/>.
    /// Return the request's result, or Pending after queueing more SQEs.
    /// </summary>
    int Complete(UblkQueue queue, ushort tag, byte subOp, int res);

    /// <summary>Required. Called on the queue thread after its loop ended, before the ring and buffers go.</summary>
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
    /// <summary>With <see cref="VolatileCache"/>: the backend cannot honour FUA itself, so the device does not claim
    /// UBLK_ATTR_FUA and the block layer turns a FUA write into the write and a flush.</summary>
    public bool NoFua;
    /// <summary>The largest READ/WRITE the backend takes (an NBD server's maximum payload); 0: no limit of its own.
    /// A larger --max-io is lowered to it.</summary>
    public uint MaxIoBytes;
    /// <summary>How many queues the backend can serve (1: an NBD export that forbids multiple connections); 0: any.</summary>
    public int MaxQueues;
    /// <summary>Why <see cref="MaxQueues"/> is what it is, for the refusal.</summary>
    public string? MaxQueuesWhy;
    public bool Rotational;
    public uint DiscardGranularity;
    /// <summary>The data lives in the server process (mem:): a recovered device would silently read zeros, so --recovery is refused.</summary>
    public bool DataDiesWithServer;
    /// <summary>Smallest logical block size the backend can serve (e.g. 4096 for a 4K-sector device opened O_DIRECT).</summary>
    public uint MinBlockSize;
    /// <summary>The io modes the backend can serve, fastest first (what --io-mode auto tries in order); null: copy only.</summary>
    public IoMode[]? IoModes;
    /// <summary>In user-copy mode the backend moves data through per-tag buffers (file I/O needs user memory); without
    /// it user copy has no per-tag buffer at all.</summary>
    public bool UserCopyBounce;

    public readonly IoMode[] Modes => IoModes ?? [IoMode.Copy];
}

public static class Backend
{
    /// <summary>The request is in flight in the backend; its result comes through Complete.</summary>
    public const int Pending = int.MinValue;
}
