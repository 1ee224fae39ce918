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
    /// <summary>Times the queue, idle, gave its buffer pages back (see <see cref="DeviceOptions.IdleRelease"/>).</summary>
    public long IdleReleases;
    /// <summary>Managed bytes the queue thread allocated between its first FETCH and its exit.</summary>
    public long AllocatedBytes;
    public int Gen0Collections;
    public int Cpu;
}

/// <summary>How a queue handles its buffers (from <see cref="DeviceOptions"/>).</summary>
public readonly record struct QueueTuning(TimeSpan IdleRelease, bool FixedBuffers, bool HugeBuffers);

/// <summary>
/// One ublk hardware queue: a pinned thread with its own io_uring, the mmap'd descriptor array of the queue,
/// and a page-aligned buffer per tag. This base holds everything a backend may touch; the loop lives in
/// <see cref="UblkQueue{TBackend}"/>. The owned native memory (descriptors, buffers) stays behind this type.
/// </summary>
public abstract unsafe class UblkQueue
{
    // user_data layout: bits 0-15 tag, bits 16-23 sub-op, bit 63 set for a backend's SQE.
    protected const ulong TargetBit = 1UL << 63;
    protected const byte CmdFetch = 0, CmdCommit = 1, CmdIdleTick = 2;

    public ushort QueueId { get; }
    public int Depth { get; }
    public uint MaxIoBytes { get; }
    public uint DeviceId { get; }
    /// <summary>Tag t's buffer is registered buffer t of the queue's ring: backends may use READ_FIXED/WRITE_FIXED.</summary>
    public bool FixedBuffers { get; }
    /// <summary>Buffers start on a 2 MiB boundary and are madvise(MADV_HUGEPAGE)d.</summary>
    public bool HugeBuffers { get; }

    protected readonly int _charFd;
    protected readonly int[] _cpus;
    protected IoUring? _ring;
    protected ublksrv_io_desc* _descs;
    protected nuint _descsSize;
    protected byte* _buffers;
    protected nuint _buffersSize;
    protected readonly int[] _extraFiles;
    internal QueueStats _stats;

    protected UblkQueue(uint devId, ushort qid, int depth, uint maxIo, int charFd, int[] cpus, int[] extraFiles, QueueTuning tuning = default)
    {
        FixedBuffers = tuning.FixedBuffers;
        HugeBuffers = tuning.HugeBuffers;
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
            CpuMask mask = CpuMask.Of(_cpus);
            Libc.SchedSetAffinity(0, CpuMask.Size, (ulong*)&mask);
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
        const nuint Huge = 2 * 1024 * 1024;
        // Huge buffers: over-map by 2 MiB, keep the 2 MiB-aligned part (whole huge pages), give the rest back.
        if (HugeBuffers) _buffersSize = (_buffersSize + Huge - 1) / Huge * Huge;
        nuint mapSize = HugeBuffers ? _buffersSize + Huge : _buffersSize;
        nint b = Libc.Mmap(0, mapSize, Libc.PROT_READ | Libc.PROT_WRITE,
            Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | Libc.MAP_NORESERVE, -1, 0);
        if (b == Libc.MAP_FAILED) throw new SysException("mmap(queue " + QueueId + " buffers)", Errno.Last);
        if (HugeBuffers)
        {
            nint start = (nint)(((nuint)b + Huge - 1) / Huge * Huge);
            if (start > b) Libc.Munmap(b, (nuint)(start - b));
            nint end = start + (nint)_buffersSize, mapEnd = b + (nint)mapSize;
            if (mapEnd > end) Libc.Munmap(end, (nuint)(mapEnd - end));
            b = start;
            Libc.Madvise(b, _buffersSize, Libc.MADV_HUGEPAGE); // best effort: THP may be off ("never")
        }
        _buffers = (byte*)b;
        if (FixedBuffers)
        {
            // Registration pins (and so faults in) every page: depth x max-io bytes of RAM from here on.
            var iovs = new iovec[Depth];
            for (int t = 0; t < Depth; t++) { iovs[t].iov_base = (nint)BufferAddress((ushort)t); iovs[t].iov_len = MaxIoBytes; }
            _ring.RegisterBuffers(iovs);
        }
    }

    // The idle tick's timespec: the kernel reads it when it issues the TIMEOUT SQE (at the next enter), so it
    // lives in native memory, not on a stack frame that is gone by then.
    protected __kernel_timespec* _idleTs;

    /// <summary>Arms (again) the relative IORING_OP_TIMEOUT whose CQE is the idle tick.</summary>
    protected void ArmIdleTick(long ns)
    {
        if (_idleTs == null)
        {
            _idleTs = (__kernel_timespec*)NativeMemory.Alloc((nuint)sizeof(__kernel_timespec));
            _idleTs->tv_sec = ns / 1_000_000_000;
            _idleTs->tv_nsec = ns % 1_000_000_000;
        }
        ref io_uring_sqe sqe = ref NextSqe();
        if (Unsafe.IsNullRef(ref sqe)) return;
        IoUring.PrepTimeout(ref sqe, _idleTs, 0, 0);
        sqe.user_data = (ulong)CmdIdleTick << 16;
    }

    /// <summary>
    /// Gives the pages of every tag buffer back to the kernel. Only while no request is being served: the kernel
    /// copies into and out of these buffers in this thread's own io_uring_enter (task work and command issue), so
    /// between two enters, with nothing at the backend, no one else touches them.
    /// </summary>
    protected void ReleaseBuffers() => Libc.Madvise((nint)_buffers, _buffersSize, Libc.MADV_DONTNEED);

    protected void TearDownResources()
    {
        _ring?.Dispose();
        if (_idleTs != null) { NativeMemory.Free(_idleTs); _idleTs = null; }
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

    private readonly long _idleNs;       // idle tick period; 0: buffers are never released
    private bool _ioSinceTick;           // a request arrived since the last idle tick
    private bool _buffersTouched;        // buffers may hold pages (a request since the last release)

    public UblkQueue(uint devId, ushort qid, int depth, uint maxIo, int charFd, int[] cpus, int[] extraFiles,
        TBackend backend, bool ioctlEncoding, QueueTuning tuning = default)
        : base(devId, qid, depth, maxIo, charFd, cpus, extraFiles, tuning)
    {
        _backend = backend;
        _useIoctl = ioctlEncoding;
        // Never with registered buffers: MADV_DONTNEED would swap fresh pages in under the mapping while the ring
        // keeps using the old pinned ones, and a backend's fixed I/O would miss the data the kernel copied.
        _idleNs = tuning.IdleRelease > TimeSpan.Zero && !tuning.FixedBuffers ? Math.Max(tuning.IdleRelease.Ticks * 100, 1_000_000) : 0;
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
            if (_idleNs > 0) ArmIdleTick(_idleNs);
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
            if (rc < 0 && rc != -Errno.EINTR && rc != -Errno.EAGAIN && rc != -Errno.EBUSY && rc != -Errno.ETIME)
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

        if ((byte)(userData >> 16) == CmdIdleTick)
        {
            OnIdleTick(res);
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

    // One TIMEOUT CQE per period, busy or not (so nothing is added per I/O). A whole period without a request
    // and nothing at the backend: the buffers go back to the kernel, once, until the next request.
    private void OnIdleTick(int res)
    {
        if (res != -Errno.ETIME) return; // cancelled (ring closing) or refused: no more ticks
        if (!_ioSinceTick && _buffersTouched && _backendInFlight == 0)
        {
            ReleaseBuffers();
            _buffersTouched = false;
            _stats.IdleReleases++;
        }
        _ioSinceTick = false;
        ArmIdleTick(_idleNs);
    }

    private void HandleIo(ushort tag)
    {
        _ioSinceTick = true;
        _buffersTouched = true;
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
