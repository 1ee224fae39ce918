using System;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Threading;
using Ublk.Aot.Abi;
using Ublk.Aot.Interop;
using Ublk.Aot.Ring;
using static Ublk.Aot.Abi.UblkConst;

namespace Ublk.Aot.Ublk;

/// <summary>
/// Per-queue counters, written only by the queue thread (plain increments: one writer, so no lock or interlocked
/// operation per I/O). Another thread (`ublk-aot stats`, /metrics) reads them live through
/// <see cref="UblkQueue.Snapshot"/>: each field is a 64-bit aligned long, so no single value is ever torn, but the
/// snapshot as a whole is not atomic (a request may be counted in Reads and not yet in InFlight, a latency bucket
/// may be a step ahead of SumNs). That is acceptable for monitoring; exact totals are the ones printed at exit.
/// </summary>
public struct QueueStats
{
    public long Reads, Writes, Flushes, Discards, WriteZeroes, Other, Errors;
    public long BytesRead, BytesWritten;
    /// <summary>Requests received from the kernel and not yet committed.</summary>
    public long InFlight;
    /// <summary>Arrival-to-commit latency of every committed request (empty with UBLK_AOT_NO_LATENCY=1).</summary>
    public LatencyHistogram Latency;
    public long LoopIterations;
    /// <summary>Times the queue, idle, gave its buffer pages back (see <see cref="DeviceOptions.IdleRelease"/>).</summary>
    public long IdleReleases;
    /// <summary>AUTO_BUF_REG: requests the kernel could not register (UBLK_IO_F_NEED_REG_BUF), registered by hand.</summary>
    public long RegFallbacks;
    /// <summary>Zero copy: REGISTER_IO_BUF / UNREGISTER_IO_BUF commands the kernel refused (the request then failed).</summary>
    public long RegFailures;
    /// <summary>`--poll`: waits a completion ended within the poll window, so the queue thread did not sleep.</summary>
    public long PollHits;
    /// <summary>Managed bytes the queue thread allocated between its first FETCH and its exit.</summary>
    public long AllocatedBytes;
    public int Gen0Collections;
    public int Cpu;
}

/// <summary>
/// One ublk hardware queue as a backend sees it: its geometry, its buffers and SQEs on its ring. The thread, the
/// descriptors and the loop live in <see cref="UblkQueue{TBackend}"/>; the buffers in a <see cref="BufferStrategy"/>.
/// </summary>
public abstract unsafe class UblkQueue
{
    private readonly QueueGeometry _geometry;
    private readonly TagBuffers? _tagBuffers;
    private protected IoUring? _ring;
    internal QueueStats _stats;
    // Zero copy: tags whose request pages this queue installed itself (REGISTER_IO_BUF), to be removed before the commit.
    private protected readonly bool[] _manualReg;
    private byte* _zeroes; // MaxIoBytes of zeros, made on first use (write-zeroes where the file system cannot)

    protected UblkQueue(in QueueGeometry geometry, BufferStrategy buffers)
    {
        _geometry = geometry;
        BufferStrategy = buffers;
        _tagBuffers = buffers as TagBuffers;
        _manualReg = IoModes.IsZeroCopy(geometry.Mode) ? new bool[geometry.Depth] : [];
    }

    /// <summary>The io mode the device was created with.</summary>
    public IoMode Mode => _geometry.Mode;

    /// <summary>Fixed-file index of /dev/ublkcN: user-copy reads and writes and the queue's own commands go there.</summary>
    public const int CharFileIndex = 0;

    /// <summary>
    /// User copy: the /dev/ublkcN file offset of tag <paramref name="tag"/>'s request data (UBLKSRV_IO_BUF_OFFSET plus
    /// the queue and tag in their bit fields, linux/ublk_cmd.h); a read there copies a WRITE's data out of the
    /// request, a write copies a READ's data into it.
    /// </summary>
    public ulong UserCopyOffset(ushort tag)
        => (ulong)UBLKSRV_IO_BUF_OFFSET + ((ulong)QueueId << UBLK_QID_OFF) + ((ulong)tag << UBLK_TAG_OFF);

    /// <summary>
    /// User copy: fills <paramref name="sqe"/> to move <paramref name="length"/> bytes between user memory at
    /// <paramref name="addr"/> and tag <paramref name="tag"/>'s request, <paramref name="done"/> bytes in: a write on
    /// /dev/ublkcN fills a READ's request (<paramref name="intoRequest"/>), a read empties a WRITE's.
    /// </summary>
    public void PrepUserCopy(ref io_uring_sqe sqe, ushort tag, bool intoRequest, ulong addr, uint length, uint done)
    {
        ulong at = UserCopyOffset(tag) + done;
        if (intoRequest) IoUring.PrepWrite(ref sqe, CharFileIndex, addr, length, at);
        else IoUring.PrepRead(ref sqe, CharFileIndex, addr, length, at);
        sqe.flags = IoUringConst.IOSQE_FIXED_FILE;
    }

    /// <summary>
    /// Zero copy: the request of <paramref name="tag"/> needs its pages installed by this queue before the backend's
    /// fixed-buffer I/O on them: always in zero-copy mode, and in auto-buf-reg mode when the kernel could not.
    /// </summary>
    public bool NeedsRegister(ushort tag, in ublksrv_io_desc iod)
        => Mode == IoMode.ZeroCopy || (Mode == IoMode.AutoBufReg && (iod.op_flags & UBLK_IO_F_NEED_REG_BUF) != 0);

    /// <summary>
    /// Queues REGISTER_IO_BUF of tag <paramref name="tag"/>'s request pages into its slot, linked to the next SQE the
    /// backend takes (the I/O on them runs only if it succeeded; otherwise that I/O completes -ECANCELED). The
    /// queue removes them again (UNREGISTER_IO_BUF) just before the commit. Returns false if the ring is broken.
    /// </summary>
    public bool LinkRegister(ushort tag)
    {
        IoUring? ring = _ring;
        if (ring == null) return false;
        if (ring.SqSpace < 2) ring.Submit(); // the link and the I/O must land in one submission
        ref io_uring_sqe sqe = ref NextSqe();
        if (Unsafe.IsNullRef(ref sqe)) return false;
        PrepBufCmd(ref sqe, UBLK_U_IO_REGISTER_IO_BUF, tag, QueueOp.RegisterBuf);
        sqe.flags = IoUringConst.IOSQE_FIXED_FILE | IoUringConst.IOSQE_IO_LINK | IoUringConst.IOSQE_CQE_SKIP_SUCCESS;
        _manualReg[tag] = true;
        return true;
    }

    /// <summary>Queues UNREGISTER_IO_BUF of a slot <see cref="LinkRegister"/> filled; its CQE comes only on failure.</summary>
    private protected void Unregister(ushort tag)
    {
        _manualReg[tag] = false;
        ref io_uring_sqe sqe = ref NextSqe();
        if (Unsafe.IsNullRef(ref sqe)) return;
        PrepBufCmd(ref sqe, UBLK_U_IO_UNREGISTER_IO_BUF, tag, QueueOp.UnregisterBuf);
        sqe.flags = IoUringConst.IOSQE_FIXED_FILE | IoUringConst.IOSQE_CQE_SKIP_SUCCESS;
    }

    private void PrepBufCmd(ref io_uring_sqe sqe, uint op, ushort tag, QueueOp kind)
    {
        IoUring.PrepUringCmd(ref sqe, CharFileIndex, op);
        sqe.user_data = UserData.ForQueue(kind, tag);
        ublksrv_io_cmd cmd;
        cmd.q_id = QueueId;
        cmd.tag = tag;
        cmd.result = 0;
        cmd.addr = RequestBufferTable.Index(tag);
        MemoryMarshal.Write(_ring!.CmdPayload(ref sqe), in cmd);
    }

    /// <summary>Address of <see cref="MaxIoBytes"/> zero bytes owned by this queue (allocated on first use, on the queue thread).</summary>
    public ulong ZeroBuffer()
    {
        if (_zeroes == null)
        {
            _zeroes = (byte*)NativeMemory.AlignedAlloc(MaxIoBytes, 4096);
            NativeMemory.Clear(_zeroes, MaxIoBytes);
        }
        return (ulong)_zeroes;
    }

    private protected void FreeZeroBuffer()
    {
        if (_zeroes != null) { NativeMemory.AlignedFree(_zeroes); _zeroes = null; }
    }

    public ushort QueueId => _geometry.QueueId;
    public int Depth => _geometry.Depth;
    public uint MaxIoBytes => _geometry.MaxIoBytes;
    public uint DeviceId => _geometry.DeviceId;
    public QueueGeometry Geometry => _geometry;
    public QueueStats Stats => _stats;

    /// <summary>
    /// The counters as another thread sees them while the queue runs: every field read once, as one aligned 64-bit
    /// load (Volatile.Read, so the compiler cannot merge or tear it). Not an atomic snapshot (see <see cref="QueueStats"/>).
    /// </summary>
    public QueueStats Snapshot()
    {
        ref QueueStats s = ref _stats;
        QueueStats r = default;
        r.Reads = Volatile.Read(ref s.Reads);
        r.Writes = Volatile.Read(ref s.Writes);
        r.Flushes = Volatile.Read(ref s.Flushes);
        r.Discards = Volatile.Read(ref s.Discards);
        r.WriteZeroes = Volatile.Read(ref s.WriteZeroes);
        r.Other = Volatile.Read(ref s.Other);
        r.Errors = Volatile.Read(ref s.Errors);
        r.BytesRead = Volatile.Read(ref s.BytesRead);
        r.BytesWritten = Volatile.Read(ref s.BytesWritten);
        r.InFlight = Volatile.Read(ref s.InFlight);
        r.LoopIterations = Volatile.Read(ref s.LoopIterations);
        r.IdleReleases = Volatile.Read(ref s.IdleReleases);
        r.RegFallbacks = Volatile.Read(ref s.RegFallbacks);
        r.RegFailures = Volatile.Read(ref s.RegFailures);
        r.PollHits = Volatile.Read(ref s.PollHits);
        r.AllocatedBytes = Volatile.Read(ref s.AllocatedBytes);
        r.Gen0Collections = Volatile.Read(ref s.Gen0Collections);
        r.Cpu = Volatile.Read(ref s.Cpu);
        for (int i = 0; i < LatencyHistogram.BucketCount; i++) r.Latency.Buckets[i] = Volatile.Read(ref s.Latency.Buckets[i]);
        r.Latency.SumNs = Volatile.Read(ref s.Latency.SumNs);
        r.Latency.MaxNs = Volatile.Read(ref s.Latency.MaxNs);
        return r;
    }

    /// <summary>How request data meets user memory on this queue.</summary>
    public BufferStrategy BufferStrategy { get; }

    /// <summary>The per-tag buffers (copy mode, and user copy's bounce buffers); null in a mode without them.</summary>
    public TagBuffers? Buffers => _tagBuffers;

    /// <summary>Fixed-file index of the n-th file the backend asked to register (index 0 is /dev/ublkcN).</summary>
    public static int FileIndex(int n) => n + 1;

    /// <summary>
    /// An SQE for a backend operation on behalf of <paramref name="tag"/>; its CQE comes back to the backend's
    /// Complete with <paramref name="subOp"/>. Submits first if the SQ is full. Null ref only if the ring is broken
    /// (or there is none: a queue driven without a kernel).
    /// </summary>
    public ref io_uring_sqe GetTargetSqe(ushort tag, byte subOp)
    {
        ref io_uring_sqe sqe = ref NextSqe();
        if (!Unsafe.IsNullRef(ref sqe)) sqe.user_data = UserData.ForTarget(subOp, tag);
        return ref sqe;
    }

    private protected ref io_uring_sqe NextSqe()
    {
        IoUring? ring = _ring;
        if (ring == null) return ref Unsafe.NullRef<io_uring_sqe>();
        ref io_uring_sqe sqe = ref ring.GetSqe();
        if (Unsafe.IsNullRef(ref sqe))
        {
            ring.Submit();
            sqe = ref ring.GetSqe();
        }
        return ref sqe;
    }

    /// <summary>
    /// A tag no request has (UBLK_MAX_QUEUE_DEPTH is 4096), for a backend's SQEs that belong to no one request (a
    /// connection's receive, send and reconnect timer). Their CQEs reach Complete with this tag, which must return
    /// <see cref="Backend.Pending"/>; the requests they finish are handed back with <see cref="Finish"/>.
    /// </summary>
    public const ushort OwnTag = ushort.MaxValue;

    /// <summary>
    /// Completes <paramref name="tag"/>, a request the backend answered Pending for, from a CQE of another tag (an
    /// NBD reply arrives on the connection's receive). Queue thread only, from within Submit or Complete.
    /// </summary>
    public abstract void Finish(ushort tag, int result);

    /// <summary>Asks the loop to exit (wakes it if blocked). Safe from any thread at any time, even before the thread starts or after it ended.</summary>
    public abstract void RequestStop();

    /// <summary>
    /// Asks the loop to hand its tags back to the kernel for the next server (an upgrade): requests the backend is
    /// working on are finished and committed; requests that arrive from now on are left to the kernel, which
    /// re-issues them to the next server (USER_RECOVERY_REISSUE); then the loop exits. Safe from any thread.
    /// </summary>
    public abstract void RequestHandOver();

    /// <summary>
    /// The loop ended because the kernel aborted its commands (STOP_DEV, QUIESCE_DEV) or for a hand-over, with every
    /// request it had taken committed: nothing of this queue is lost if another server takes the device.
    /// </summary>
    public abstract bool EndedClean { get; }

    internal abstract void Start(CountdownEvent ready, ManualResetEventSlim exited);
    internal abstract void Join();
    internal abstract bool Join(TimeSpan timeout);
    internal abstract Exception? Failure { get; }
}

/// <summary>
/// The queue loop, specialised per backend struct so each backend call is direct: a pinned thread with its own
/// io_uring and the mmap'd descriptor array of the queue. Native resources are set up and torn down on the thread.
/// </summary>
public sealed unsafe class UblkQueue<TBackend> : UblkQueue where TBackend : struct, IBackend
{
    private readonly int _charFd;
    private readonly int[] _cpus;
    private readonly int[] _extraFiles;
    private readonly bool _useIoctl;
    private TBackend _backend;
    private Thread? _thread;
    private Exception? _failure;

    private ublksrv_io_desc* _descs;
    private nuint _descsSize;
    private ulong[] _cmdAddr = [];   // per tag: ublksrv_io_cmd.addr, from the buffer strategy at set-up
    private ulong[] _sqeAddr = [];   // per tag: sqe->addr of FETCH/COMMIT (AUTO_BUF_REG's buffer index and flags)
    private int _cmdsInFlight;       // FETCH/COMMIT commands the kernel holds
    private int _backendInFlight;    // requests the backend is working on

    // Stop hand-shake (Dekker-style): RequestStop stores the flag then loads the ring; Run stores the ring then
    // loads the flag. Plain volatile accesses would let each side's load pass its own store (store-load reordering
    // is allowed even on x86), and both could miss the other. Interlocked.Exchange is a full fence on both sides, so
    // at least one of them sees the other's store: either RequestStop cancels the published ring, or Run sees the
    // flag right after publishing and cancels it itself. IoUring.Cancel is safe against the ring's Dispose.
    private int _stopRequested;
    private int _handOverRequested; // set before _stopRequested by RequestHandOver
    private IoUring? _ringForStop;

    // Draining: the kernel aborted a command (the device stops or is quiesced) or a hand-over was asked for. The loop
    // then exits as soon as the backend holds no request, after submitting the commits of those it finished.
    private bool _draining;
    private bool _leaveNewToKernel; // hand-over: requests arriving now stay with the kernel (re-issued later)
    private volatile bool _endedClean;
    private readonly int _fetchTags; // tags given a FETCH at start: Depth, fewer only under a test hook

    // Latency: the Stopwatch timestamp of each tag's request when it arrived (one clock read at arrival, one at the
    // commit; none at all with UBLK_AOT_NO_LATENCY=1).
    private readonly bool _timeLatency = LatencyTiming.Enabled;
    private readonly bool _ticksAreNs = LatencyTiming.NsPerTick == 1.0;
    private readonly long[] _arrival;
    private readonly long _pollTicks; // serve --poll, in Stopwatch ticks; 0: sleep in the kernel at once

    // The idle timer: one relative IORING_OP_TIMEOUT, re-armed from its own CQE (nothing per I/O).
    private readonly long _idleNs;   // 0: the buffer strategy never wants idle release
    private __kernel_timespec* _idleTs; // read by the kernel when it issues the SQE (the next enter): native memory
    private bool _ioSinceTick;       // a request arrived since the last idle tick
    private bool _ioSinceRelease;    // a request arrived since the last idle release

    public UblkQueue(in QueueGeometry geometry, BufferStrategy buffers, int charFd, int[] cpus, int[] extraFiles,
        TBackend backend, bool ioctlEncoding, int fetchTags = -1, int pollMicros = 0)
        : base(geometry, buffers)
    {
        _pollTicks = pollMicros * Stopwatch.Frequency / 1_000_000;
        _fetchTags = fetchTags < 0 ? geometry.Depth : Math.Min(fetchTags, geometry.Depth);
        _arrival = new long[geometry.Depth];
        _charFd = charFd;
        _cpus = cpus;
        _extraFiles = extraFiles;
        _backend = backend;
        _useIoctl = ioctlEncoding;
        TimeSpan idle = buffers.IdleRelease;
        _idleNs = idle > TimeSpan.Zero ? Math.Max(idle.Ticks * 100, 1_000_000) : 0;
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

    internal override bool Join(TimeSpan timeout) => _thread == null || _thread.Join(timeout);

    public override bool EndedClean => _endedClean;

    public override void RequestStop()
    {
        Interlocked.Exchange(ref _stopRequested, 1);
        Volatile.Read(ref _ringForStop)?.Cancel();
    }

    public override void RequestHandOver()
    {
        Interlocked.Exchange(ref _handOverRequested, 1);
        RequestStop();
    }

    private void Run(CountdownEvent ready)
    {
        bool signalled = false;
        try
        {
            SetUp();
            _backend.Attach(this);
            _stats.Cpu = Libc.SchedGetCpu();
            for (int t = 0; t < _fetchTags; t++) QueueCmd((ushort)t, QueueOp.Fetch, 0);
            if (_idleNs > 0) ArmIdleTick();
            // With DEFER_TASKRUN the FETCHes are processed as task work: enter with GETEVENTS (Submit does) so
            // they reach the driver before START_DEV waits for them.
            int rc = _ring!.Submit();
            if (rc < 0) throw new SysException("io_uring_enter(FETCH_REQ, queue " + QueueId + ")", -rc);
            Interlocked.Exchange(ref _ringForStop, _ring);
            if (Volatile.Read(ref _stopRequested) != 0) _ring.Cancel();
            ready.Signal();
            signalled = true;
            // Measured from after the start-up hand-shake: the last Signal sets an event the device thread may be
            // waiting on, and if the two meet on its lock, the first contended monitor of the process allocates
            // ~5.7 KB on this thread (the one-off "alloc_bytes" of earlier sessions; AGENTS.md). Not I/O.
            long allocStart = GC.GetAllocatedBytesForCurrentThread();
            int gcStart = GC.CollectionCount(0);
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
            // Unpublish before the ring goes; a RequestStop that already loaded it is serialised with Dispose
            // inside IoUring (Cancel never writes to a closed, possibly reused, eventfd number).
            Interlocked.Exchange(ref _ringForStop, null);
            // A hand-over leaves the ring, the descriptors and the buffers to this thread's exit, which the process's
            // exit follows: the kernel then gives the parked commands and the requests left to it back exactly as
            // after a crash (the path SIGKILL proves), each requeued for the next server. Closing the ring from the
            // live thread instead left 6.12 waiting for a request forever in 1 of 3 upgrades (AGENTS.md).
            if (Volatile.Read(ref _handOverRequested) == 0 || !_endedClean) TearDown();
        }
    }

    // ---- native resources; set up and torn down on the queue thread ----

    private void SetUp()
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
        uint entries = System.Numerics.BitOperations.RoundUpToPowerOf2((uint)Math.Max(Depth * 2, 2));
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

        BufferStrategy.SetUp(Geometry, _ring);
        _cmdAddr = new ulong[Depth];
        _sqeAddr = new ulong[Depth];
        for (int t = 0; t < Depth; t++)
        {
            _cmdAddr[t] = BufferStrategy.CommandAddress((ushort)t);
            _sqeAddr[t] = BufferStrategy.SqeAddress((ushort)t);
        }
    }

    private void TearDown()
    {
        _ring?.Dispose(); // cancels the parked FETCH/COMMIT commands in the kernel; unregisters buffers
        if (_idleTs != null) { NativeMemory.Free(_idleTs); _idleTs = null; }
        if (_descs != null) { Libc.Munmap((nint)_descs, _descsSize); _descs = null; }
        BufferStrategy.Dispose();
        FreeZeroBuffer();
    }

    // ---- the loop ----

    private void Loop()
    {
        IoUring ring = _ring!;
        var router = new QueueCqeRouter(this);
        while (true)
        {
            // Checked every iteration: under load the CQ is never empty and the eventfd wake-up may never be seen.
            if (ring.IsCancelled)
            {
                if (Volatile.Read(ref _handOverRequested) == 0) break;
                _draining = _leaveNewToKernel = true; // a cancelled ring no longer blocks: this spins until drained
            }
            if (_draining && _backendInFlight == 0)
            {
                // Every request taken is finished: hand the commits to the kernel before the ring goes.
                int src = ring.Submit();
                if (src < 0) throw new SysException("io_uring_enter(COMMIT, queue " + QueueId + ")", -src);
                _endedClean = true;
                break;
            }
            if (_cmdsInFlight == 0 && _backendInFlight == 0) { _endedClean = true; break; } // every tag aborted
            int rc = _pollTicks > 0 ? PollThenWait(ring) : ring.SubmitAndWait(1);
            if (rc < 0 && rc != -Errno.EINTR && rc != -Errno.EAGAIN && rc != -Errno.EBUSY && rc != -Errno.ETIME)
                throw new SysException("io_uring_enter(queue " + QueueId + ")", -rc);
            _stats.LoopIterations++;
            ring.DrainCompletions(ref router);
        }
    }

    /// <summary>
    /// `serve --poll USECS`: before sleeping in io_uring_enter, keep entering without waiting (which still runs the
    /// ring's deferred task work) for up to <see cref="_pollTicks"/>, so a completion that lands within that window
    /// is reaped without the sleep and wake-up. Costs a CPU spinning on this queue's thread meanwhile.
    /// </summary>
    private int PollThenWait(IoUring ring)
    {
        int rc = ring.Submit();
        if (rc < 0 || ring.CqReady > 0) return rc;
        long end = Stopwatch.GetTimestamp() + _pollTicks;
        while (Stopwatch.GetTimestamp() < end)
        {
            rc = ring.Submit();
            if (rc < 0 || ring.IsCancelled) return rc;
            if (ring.CqReady > 0) { _stats.PollHits++; return rc; }
        }
        return ring.SubmitAndWait(1);
    }

    // DrainCompletions wants a struct handler (a direct call); this queue is a class, so route through a tiny struct.
    private readonly struct QueueCqeRouter(UblkQueue<TBackend> q) : ICqeHandler
    {
        public void OnCqe(ulong userData, int res, uint flags) => q.OnCqe(new UserData(userData), res);
    }

    private void OnCqe(UserData ud, int res)
    {
        ushort tag = ud.Tag;
        if (ud.IsTarget)
        {
            int r = _backend.Complete(this, tag, ud.SubOp, res);
            if (r != Backend.Pending)
            {
                _backendInFlight--;
                Commit(tag, r);
            }
            return;
        }

        switch (ud.Op)
        {
            case QueueOp.IdleTick:
                OnIdleTick(res);
                return;
            case QueueOp.RegisterBuf:
                // Only failures post a CQE (CQE_SKIP_SUCCESS). The linked I/O completes -ECANCELED; nothing to remove.
                _stats.RegFailures++;
                _manualReg[tag] = false;
                return;
            case QueueOp.UnregisterBuf:
                _stats.RegFailures++;
                return;
            case QueueOp.Fetch:
            case QueueOp.Commit:
                _cmdsInFlight--;
                if (res == UBLK_IO_RES_OK)
                {
                    // Hand-over: not taken. The next server gets it (the kernel re-issues a request the old one held).
                    if (!_leaveNewToKernel) HandleIo(tag);
                }
                // UBLK_IO_RES_ABORT: the device is stopping or being quiesced (QUIESCE_DEV aborts only the idle tags);
                // finish what the backend holds, then leave. Any other error means the command itself was refused; the
                // tag cannot be served again either.
                else if (res == UBLK_IO_RES_ABORT) _draining = true;
                else _stats.Errors++;
                return;
        }
    }

    /// <summary>Arms (again) the relative IORING_OP_TIMEOUT whose CQE is the idle tick.</summary>
    private void ArmIdleTick()
    {
        if (_idleTs == null)
        {
            _idleTs = (__kernel_timespec*)NativeMemory.Alloc((nuint)sizeof(__kernel_timespec));
            _idleTs->tv_sec = _idleNs / 1_000_000_000;
            _idleTs->tv_nsec = _idleNs % 1_000_000_000;
        }
        ref io_uring_sqe sqe = ref NextSqe();
        if (Unsafe.IsNullRef(ref sqe)) return;
        IoUring.PrepTimeout(ref sqe, _idleTs, 0, 0);
        sqe.user_data = UserData.ForQueue(QueueOp.IdleTick, 0);
    }

    // One TIMEOUT CQE per period, busy or not (so nothing is added per I/O). A whole period without a request and
    // nothing at the backend: the buffer strategy may give memory back, once, until the next request.
    private void OnIdleTick(int res)
    {
        if (res != -Errno.ETIME) return; // cancelled (ring closing) or refused: no more ticks
        if (!_ioSinceTick && _ioSinceRelease && _backendInFlight == 0)
        {
            if (BufferStrategy.ReleaseIdle()) _stats.IdleReleases++;
            _ioSinceRelease = false;
        }
        _ioSinceTick = false;
        ArmIdleTick();
    }

    private void HandleIo(ushort tag)
    {
        _stats.InFlight++;
        if (_timeLatency) _arrival[tag] = Stopwatch.GetTimestamp();
        _ioSinceTick = true;
        _ioSinceRelease = true;
        ref readonly ublksrv_io_desc iod = ref _descs[tag];
        if ((iod.op_flags & UBLK_IO_F_NEED_REG_BUF) != 0) _stats.RegFallbacks++;
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
        int r = _backend.Submit(this, tag, in iod);
        if (r == Backend.Pending) _backendInFlight++;
        else Commit(tag, r);
    }

    public override void Finish(ushort tag, int result)
    {
        _backendInFlight--;
        Commit(tag, result);
    }

    private void Commit(ushort tag, int result)
    {
        // Zero copy: the pages this queue installed leave the table first (same submission, in order), so the
        // slot is free when the tag's next request arrives. A linked I/O cancelled by a failed registration says
        // ECANCELED, which means nothing to the block layer: it is an I/O error.
        if (_manualReg.Length != 0 && _manualReg[tag]) Unregister(tag);
        if (result == -Errno.ECANCELED) result = -Errno.EIO;
        if (result < 0) _stats.Errors++;
        else
        {
            ref readonly ublksrv_io_desc iod = ref _descs[tag];
            if (iod.Op == UBLK_IO_OP_READ) _stats.BytesRead += result;
            else if (iod.Op == UBLK_IO_OP_WRITE) _stats.BytesWritten += result;
        }
        _stats.InFlight--;
        if (_timeLatency)
        {
            long ticks = Stopwatch.GetTimestamp() - _arrival[tag];
            _stats.Latency.Record(_ticksAreNs ? ticks : (long)(ticks * LatencyTiming.NsPerTick));
        }
        QueueCmd(tag, QueueOp.Commit, result);
    }

    private void QueueCmd(ushort tag, QueueOp kind, int result)
    {
        ref io_uring_sqe sqe = ref NextSqe();
        if (Unsafe.IsNullRef(ref sqe)) { _stats.Errors++; return; }
        uint op = kind == QueueOp.Fetch
            ? (_useIoctl ? UBLK_U_IO_FETCH_REQ : UBLK_IO_FETCH_REQ)
            : (_useIoctl ? UBLK_U_IO_COMMIT_AND_FETCH_REQ : UBLK_IO_COMMIT_AND_FETCH_REQ);
        IoUring.PrepUringCmd(ref sqe, 0, op);           // fd 0 = /dev/ublkcN in the fixed-file table
        sqe.flags = IoUringConst.IOSQE_FIXED_FILE;
        sqe.user_data = UserData.ForQueue(kind, tag);
        sqe.addr = _sqeAddr[tag];
        ublksrv_io_cmd cmd;
        cmd.q_id = QueueId;
        cmd.tag = tag;
        cmd.result = result;
        cmd.addr = _cmdAddr[tag];
        MemoryMarshal.Write(_ring!.CmdPayload(ref sqe), in cmd);
        _cmdsInFlight++;
    }
}
