using System;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Threading;
using Ublk.Aot.Abi;
using Ublk.Aot.Backends;
using Ublk.Aot.Interop;
using Ublk.Aot.Ring;
using static Ublk.Aot.Abi.UblkConst;

namespace Ublk.Aot.Ublk;

/// <summary>Per-queue counters, written only by the queue thread.</summary>
public struct QueueStats
{
    public long Reads, Writes, Flushes, Discards, WriteZeroes, Other, Errors;
    public long BytesRead, BytesWritten;
    public long LoopIterations;
    /// <summary>Managed bytes the queue thread allocated between its first FETCH and its exit.</summary>
    public long AllocatedBytes;
    public int Gen0Collections;
    public int Cpu;
}

/// <summary>
/// One ublk hardware queue: a pinned thread with its own io_uring, the mmap'd descriptor array of the queue,
/// and a page-aligned buffer per tag. This base holds everything a backend may touch; the loop lives in
/// <see cref="UblkQueue{TBackend}"/>. The owned native memory (descriptors, buffers) stays behind this type.
/// </summary>
public abstract unsafe class UblkQueue
{
    // user_data layout: bits 0-15 tag, bits 16-23 sub-op, bit 63 set for a backend's SQE.
    protected const ulong TargetBit = 1UL << 63;
    protected const byte CmdFetch = 0, CmdCommit = 1;

    public ushort QueueId { get; }
    public int Depth { get; }
    public uint MaxIoBytes { get; }
    public uint DeviceId { get; }

    protected readonly int _charFd;
    protected readonly int[] _cpus;
    protected IoUring? _ring;
    protected ublksrv_io_desc* _descs;
    protected nuint _descsSize;
    protected byte* _buffers;
    protected nuint _buffersSize;
    protected readonly int[] _extraFiles;
    internal QueueStats _stats;

    protected UblkQueue(uint devId, ushort qid, int depth, uint maxIo, int charFd, int[] cpus, int[] extraFiles)
    {
        DeviceId = devId;
        QueueId = qid;
        Depth = depth;
        MaxIoBytes = maxIo;
        _charFd = charFd;
        _cpus = cpus;
        _extraFiles = extraFiles;
    }

    public QueueStats Stats => _stats;

    /// <summary>Fixed-file index of the n-th file the backend asked to register (index 0 is /dev/ublkcN).</summary>
    public static int FileIndex(int n) => n + 1;

    /// <summary>Address of the tag's I/O buffer (page aligned, <see cref="MaxIoBytes"/> long), for SQEs.</summary>
    public ulong BufferAddress(ushort tag) => (ulong)(_buffers + (nuint)tag * MaxIoBytes);

    /// <summary>The tag's I/O buffer.</summary>
    public Span<byte> Buffer(ushort tag, int length) => new(_buffers + (nuint)tag * MaxIoBytes, length);

    /// <summary>
    /// An SQE for a backend operation on behalf of <paramref name="tag"/>; its CQE comes back to the backend's
    /// Complete with <paramref name="subOp"/>. Submits first if the SQ is full. Null ref only if the ring is broken.
    /// </summary>
    public ref io_uring_sqe GetTargetSqe(ushort tag, byte subOp)
    {
        ref io_uring_sqe sqe = ref NextSqe();
        if (!Unsafe.IsNullRef(ref sqe)) sqe.user_data = TargetBit | ((ulong)subOp << 16) | tag;
        return ref sqe;
    }

    protected ref io_uring_sqe NextSqe()
    {
        IoUring ring = _ring!;
        ref io_uring_sqe sqe = ref ring.GetSqe();
        if (Unsafe.IsNullRef(ref sqe))
        {
            ring.Submit();
            sqe = ref ring.GetSqe();
        }
        return ref sqe;
    }

    // ---- setup and teardown of the native resources; run on the queue thread ----

    protected void SetUpResources()
    {
        // Pin first: the ring, the buffers' first touch and the kernel's per-queue task all land on this CPU.
        if (_cpus.Length > 0)
        {
            ulong* mask = stackalloc ulong[16];
            for (int i = 0; i < 16; i++) mask[i] = 0;
            foreach (int c in _cpus) if (c >= 0 && c < 1024) mask[c >> 6] |= 1UL << (c & 63);
            Libc.SchedSetAffinity(0, 16 * sizeof(ulong), mask);
        }
        // This thread serves I/O for a block device: let it allocate through memory pressure (needs CAP_SYS_RESOURCE).
        Libc.Prctl(Libc.PR_SET_IO_FLUSHER, 1, 0, 0, 0);

        // SQ holds one command per tag plus backend SQEs; the CQ twice that.
        uint entries = (uint)BitOperationsRoundUp(Depth * 2);
        _ring = new IoUring(entries, new IoUringOptions
        {
            CqEntries = entries * 2,
            CoopTaskrun = true,
            SingleIssuer = true,
            DeferTaskrun = true,
            FallbackOnEinval = true,
            Cancellable = true,
        });
        Span<int> files = stackalloc int[1 + _extraFiles.Length];
        files[0] = _charFd;
        for (int i = 0; i < _extraFiles.Length; i++) files[i + 1] = _extraFiles[i];
        _ring.RegisterFiles(files);

        // The descriptor array of queue q starts at q * round_up(MAX_DEPTH * sizeof(desc), page).
        long page = Environment.SystemPageSize;
        long stride = (UBLK_MAX_QUEUE_DEPTH * sizeof(ublksrv_io_desc) + page - 1) / page * page;
        _descsSize = (nuint)((Depth * sizeof(ublksrv_io_desc) + page - 1) / page * page);
        nint d = Libc.Mmap(0, _descsSize, Libc.PROT_READ, Libc.MAP_SHARED | Libc.MAP_POPULATE, _charFd,
            UBLKSRV_CMD_BUF_OFFSET + QueueId * stride);
        if (d == Libc.MAP_FAILED) throw new SysException("mmap(/dev/ublkc" + DeviceId + " queue " + QueueId + " descriptors)", Errno.Last);
        _descs = (ublksrv_io_desc*)d;

        _buffersSize = (nuint)Depth * MaxIoBytes;
        nint b = Libc.Mmap(0, _buffersSize, Libc.PROT_READ | Libc.PROT_WRITE,
            Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | Libc.MAP_NORESERVE, -1, 0);
        if (b == Libc.MAP_FAILED) throw new SysException("mmap(queue " + QueueId + " buffers)", Errno.Last);
        _buffers = (byte*)b;
    }

    protected void TearDownResources()
    {
        _ring?.Dispose();
        if (_descs != null) { Libc.Munmap((nint)_descs, _descsSize); _descs = null; }
        if (_buffers != null) { Libc.Munmap((nint)_buffers, _buffersSize); _buffers = null; }
    }

    private static int BitOperationsRoundUp(int v) => (int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)Math.Max(v, 2));

    /// <summary>Asks the loop to exit (wakes it if blocked). Safe from any thread while the queue runs.</summary>
    public abstract void RequestStop();

    internal abstract void Start(CountdownEvent ready, ManualResetEventSlim exited);
    internal abstract void Join();
    internal abstract Exception? Failure { get; }
}

/// <summary>The queue loop, specialised per backend struct so each backend call is direct.</summary>
public sealed unsafe class UblkQueue<TBackend> : UblkQueue where TBackend : struct, IBackend
{
    private TBackend _backend;
    private Thread? _thread;
    private Exception? _failure;
    private int _cmdsInFlight;     // FETCH/COMMIT commands the kernel holds
    private int _backendInFlight;  // requests the backend is working on
    private bool _useIoctl;
    private volatile bool _stopRequested;
    private IoUring? _ringForStop; // published once the ring exists, so RequestStop can wake it

    public UblkQueue(uint devId, ushort qid, int depth, uint maxIo, int charFd, int[] cpus, int[] extraFiles,
        TBackend backend, bool ioctlEncoding)
        : base(devId, qid, depth, maxIo, charFd, cpus, extraFiles)
    {
        _backend = backend;
        _useIoctl = ioctlEncoding;
    }

    internal override Exception? Failure => _failure;

    internal override void Start(CountdownEvent ready, ManualResetEventSlim exited)
    {
        _thread = new Thread(() => { Run(ready); exited.Set(); }, 256 * 1024)
        {
            IsBackground = true,
            Name = "ublk" + DeviceId + "q" + QueueId,
        };
        _thread.Start();
    }

    internal override void Join() => _thread?.Join();

    public override void RequestStop()
    {
        _stopRequested = true;
        Volatile.Read(ref _ringForStop)?.Cancel();
    }

    private void Run(CountdownEvent ready)
    {
        bool signalled = false;
        try
        {
            SetUpResources();
            _backend.Attach(this);
            _stats.Cpu = Libc.SchedGetCpu();
            for (int t = 0; t < Depth; t++) QueueCmd((ushort)t, CmdFetch, 0);
            // With DEFER_TASKRUN the FETCHes are processed as task work: enter with GETEVENTS (Submit does) so
            // they reach the driver before START_DEV waits for them.
            int rc = _ring!.Submit();
            if (rc < 0) throw new SysException("io_uring_enter(FETCH_REQ, queue " + QueueId + ")", -rc);
            Volatile.Write(ref _ringForStop, _ring);
            if (_stopRequested) _ring.Cancel();
            long allocStart = GC.GetAllocatedBytesForCurrentThread();
            int gcStart = GC.CollectionCount(0);
            ready.Signal();
            signalled = true;
            Loop();
            _stats.AllocatedBytes = GC.GetAllocatedBytesForCurrentThread() - allocStart;
            _stats.Gen0Collections = GC.CollectionCount(0) - gcStart;
        }
        catch (Exception e)
        {
            _failure = e;
            if (!signalled) ready.Signal();
        }
        finally
        {
            try { _backend.Detach(this); } catch (Exception e) { _failure ??= e; }
            Volatile.Write(ref _ringForStop, null);
            TearDownResources();
        }
    }

    private void Loop()
    {
        IoUring ring = _ring!;
        var router = new QueueCqeRouter(this);
        while (true)
        {
            // Checked every iteration: under load the CQ is never empty and the eventfd wake-up may never be seen.
            if (ring.IsCancelled) break;
            if (_cmdsInFlight == 0 && _backendInFlight == 0) break; // every tag aborted: the device is gone
            int rc = ring.SubmitAndWait(1);
            if (rc < 0 && rc != -Errno.EINTR && rc != -Errno.EAGAIN && rc != -Errno.EBUSY)
                throw new SysException("io_uring_enter(queue " + QueueId + ")", -rc);
            _stats.LoopIterations++;
            ring.DrainCompletions(ref router);
        }
    }

    // DrainCompletions wants a struct handler (a direct call); this queue is a class, so route through a tiny struct.
    private readonly struct QueueCqeRouter(UblkQueue<TBackend> q) : ICqeHandler
    {
        public void OnCqe(ulong userData, int res, uint flags) => q.OnCqe(userData, res, flags);
    }

    public void OnCqe(ulong userData, int res, uint flags)
    {
        ushort tag = (ushort)userData;
        if ((userData & TargetBit) != 0)
        {
            int r = _backend.Complete(this, tag, (byte)(userData >> 16), res);
            if (r != Backend.Pending)
            {
                _backendInFlight--;
                Commit(tag, r);
            }
            return;
        }

        _cmdsInFlight--;
        if (res == UBLK_IO_RES_OK)
        {
            HandleIo(tag);
        }
        // UBLK_IO_RES_ABORT: the device is stopping; this tag is done. Any other error means the command
        // itself was refused; the tag cannot be served again either.
        else if (res != UBLK_IO_RES_ABORT) _stats.Errors++;
    }

    private void HandleIo(ushort tag)
    {
        ref readonly ublksrv_io_desc iod = ref _descs[tag];
        int r;
        switch (iod.Op)
        {
            case UBLK_IO_OP_READ: _stats.Reads++; break;
            case UBLK_IO_OP_WRITE: _stats.Writes++; break;
            case UBLK_IO_OP_FLUSH: _stats.Flushes++; break;
            case UBLK_IO_OP_DISCARD: _stats.Discards++; break;
            case UBLK_IO_OP_WRITE_ZEROES: _stats.WriteZeroes++; break;
            default:
                _stats.Other++;
                Commit(tag, -Errno.EOPNOTSUPP);
                return;
        }
        if ((ulong)iod.nr_sectors << 9 > MaxIoBytes && (iod.Op == UBLK_IO_OP_READ || iod.Op == UBLK_IO_OP_WRITE))
        {
            Commit(tag, -Errno.EINVAL);
            return;
        }
        r = _backend.Submit(this, tag, in iod);
        if (r == Backend.Pending) _backendInFlight++;
        else Commit(tag, r);
    }

    private void Commit(ushort tag, int result)
    {
        if (result < 0) _stats.Errors++;
        else
        {
            ref readonly ublksrv_io_desc iod = ref _descs[tag];
            if (iod.Op == UBLK_IO_OP_READ) _stats.BytesRead += result;
            else if (iod.Op == UBLK_IO_OP_WRITE) _stats.BytesWritten += result;
        }
        QueueCmd(tag, CmdCommit, result);
    }

    private void QueueCmd(ushort tag, byte kind, int result)
    {
        ref io_uring_sqe sqe = ref NextSqe();
        if (Unsafe.IsNullRef(ref sqe)) { _stats.Errors++; return; }
        uint op = kind == CmdFetch
            ? (_useIoctl ? UBLK_U_IO_FETCH_REQ : UBLK_IO_FETCH_REQ)
            : (_useIoctl ? UBLK_U_IO_COMMIT_AND_FETCH_REQ : UBLK_IO_COMMIT_AND_FETCH_REQ);
        IoUring.PrepUringCmd(ref sqe, 0, op);           // fd 0 = /dev/ublkcN in the fixed-file table
        sqe.flags = IoUringConst.IOSQE_FIXED_FILE;
        sqe.user_data = ((ulong)kind << 16) | tag;
        ublksrv_io_cmd cmd;
        cmd.q_id = QueueId;
        cmd.tag = tag;
        cmd.result = result;
        cmd.addr = BufferAddress(tag);
        MemoryMarshal.Write(_ring!.CmdPayload(ref sqe), in cmd);
        _cmdsInFlight++;
    }
}
