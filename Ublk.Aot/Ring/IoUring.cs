using System;
using System.Runtime.CompilerServices;
using System.Threading;
using Ublk.Aot.Abi;
using Ublk.Aot.Interop;
using static Ublk.Aot.Abi.IoUringConst;

namespace Ublk.Aot.Ring;

/// <summary>Receives completions from <see cref="IoUring.DrainCompletions{T}"/>; a struct, so the call is direct.</summary>
public interface ICqeHandler
{
    void OnCqe(ulong userData, int res, uint flags);
}

/// <summary>
/// An io_uring instance over its mmap'd SQ/CQ memory, with no knowledge of ublk. One thread owns it:
/// it fills SQEs, submits and reaps. The only cross-thread entry is <see cref="Cancel"/>.
/// Nothing here allocates on the managed heap after construction.
/// </summary>
public sealed unsafe class IoUring : IDisposable
{
    /// <summary>user_data of the internal eventfd read that <see cref="Cancel"/> completes; never passed to handlers.</summary>
    public const ulong CancelUserData = ulong.MaxValue;

    private int _fd;
    private readonly int _sqeSize;

    // SQ ring: head is written by the kernel, tail by us; array is filled once (identity).
    private readonly uint* _sqHead;
    private readonly uint* _sqTail;
    private readonly uint* _sqFlags;
    private readonly uint* _sqDropped;
    private readonly uint _sqMask;
    private readonly byte* _sqes;
    private uint _sqeTail;          // next free slot (local; published to *_sqTail on submit)

    // CQ ring: tail is written by the kernel, head by us.
    private readonly uint* _cqHead;
    private readonly uint* _cqTail;
    private readonly uint* _cqOverflow;
    private readonly uint _cqMask;
    private readonly io_uring_cqe* _cqes;

    private readonly nint _ringPtr;
    private readonly nuint _ringSize;
    private readonly nint _cqPtr;
    private readonly nuint _cqSize;
    private readonly nint _sqesPtr;
    private readonly nuint _sqesSize;

    // Cancellation: a flag the loop checks every iteration (a busy CQ may never let it block),
    // plus an eventfd whose pending read wakes a thread blocked in io_uring_enter.
    private int _cancelled;
    private readonly int _eventFd = -1;
    private readonly ulong* _eventBuf;
    private bool _cancelArmed;

    public uint SqEntries { get; }
    public uint CqEntries { get; }
    /// <summary>The setup flags the kernel accepted (after any EINVAL fallback).</summary>
    public uint SetupFlags { get; }
    public uint Features { get; }
    public int Fd => _fd;
    public bool IsSqe128 => _sqeSize == SQE128_SIZE;

    /// <summary>Times the kernel reported IORING_SQ_CQ_OVERFLOW (CQEs parked in the kernel because the CQ was full).</summary>
    public long OverflowEvents { get; private set; }
    /// <summary>CQEs the kernel dropped for good (cq overflow counter; non-zero only without IORING_FEAT_NODROP).</summary>
    public uint CqDropped => Volatile.Read(ref *_cqOverflow);
    /// <summary>SQEs the kernel dropped as invalid (sq dropped counter).</summary>
    public uint SqDropped => Volatile.Read(ref *_sqDropped);

    public bool IsCancelled => Volatile.Read(ref _cancelled) != 0;

    public IoUring(uint entries, IoUringOptions options)
    {
        uint flags = 0;
        if (options.Sqe128) flags |= IORING_SETUP_SQE128;
        if (options.CqEntries != 0) flags |= IORING_SETUP_CQSIZE;
        if (options.CoopTaskrun) flags |= IORING_SETUP_COOP_TASKRUN;
        if (options.SingleIssuer || options.DeferTaskrun) flags |= IORING_SETUP_SINGLE_ISSUER;
        if (options.DeferTaskrun) flags |= IORING_SETUP_DEFER_TASKRUN;

        io_uring_params p;
        while (true)
        {
            p = default;
            p.flags = flags;
            p.cq_entries = options.CqEntries;
            _fd = (int)Libc.Syscall6(Libc.SYS_io_uring_setup, (nint)entries, (nint)(&p), 0, 0, 0, 0);
            if (_fd >= 0) break;
            int err = Errno.Last;
            uint optional = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
            if (err == Errno.EINVAL && options.FallbackOnEinval && (flags & optional) != 0)
            {
                // Drop the newest optimisation first: DEFER_TASKRUN (6.1), SINGLE_ISSUER (6.0), COOP_TASKRUN (5.19).
                if ((flags & IORING_SETUP_DEFER_TASKRUN) != 0) flags &= ~IORING_SETUP_DEFER_TASKRUN;
                else if ((flags & IORING_SETUP_SINGLE_ISSUER) != 0) flags &= ~IORING_SETUP_SINGLE_ISSUER;
                else flags &= ~IORING_SETUP_COOP_TASKRUN;
                continue;
            }
            throw new SysException("io_uring_setup(entries=" + entries + ")", err);
        }

        SetupFlags = flags;
        Features = p.features;
        SqEntries = p.sq_entries;
        CqEntries = p.cq_entries;
        _sqeSize = options.Sqe128 ? SQE128_SIZE : SQE_SIZE;

        try
        {
            _ringSize = p.sq_off.array + p.sq_entries * sizeof(uint);
            _cqSize = p.cq_off.cqes + p.cq_entries * (uint)sizeof(io_uring_cqe);
            bool single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
            if (single && _cqSize > _ringSize) _ringSize = _cqSize;

            _ringPtr = MapOrThrow(_ringSize, IORING_OFF_SQ_RING, "mmap(SQ ring)");
            if (single) { _cqPtr = _ringPtr; _cqSize = 0; }
            else _cqPtr = MapOrThrow(_cqSize, IORING_OFF_CQ_RING, "mmap(CQ ring)");
            _sqesSize = (nuint)(p.sq_entries * _sqeSize);
            _sqesPtr = MapOrThrow(_sqesSize, IORING_OFF_SQES, "mmap(SQEs)");

            byte* sq = (byte*)_ringPtr;
            _sqHead = (uint*)(sq + p.sq_off.head);
            _sqTail = (uint*)(sq + p.sq_off.tail);
            _sqFlags = (uint*)(sq + p.sq_off.flags);
            _sqDropped = (uint*)(sq + p.sq_off.dropped);
            _sqMask = *(uint*)(sq + p.sq_off.ring_mask);
            uint* array = (uint*)(sq + p.sq_off.array);
            // Identity mapping, written once: slot i of the SQE array is always index i.
            for (uint i = 0; i < p.sq_entries; i++) array[i] = i;
            _sqes = (byte*)_sqesPtr;
            _sqeTail = *_sqTail;

            byte* cq = (byte*)_cqPtr;
            _cqHead = (uint*)(cq + p.cq_off.head);
            _cqTail = (uint*)(cq + p.cq_off.tail);
            _cqOverflow = (uint*)(cq + p.cq_off.overflow);
            _cqMask = *(uint*)(cq + p.cq_off.ring_mask);
            _cqes = (io_uring_cqe*)(cq + p.cq_off.cqes);

            if (options.Cancellable)
            {
                _eventFd = (int)SysException.Check(Libc.EventFd(0, Libc.EFD_CLOEXEC), "eventfd");
                _eventBuf = (ulong*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(8, 8);
                ArmCancel();
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    private nint MapOrThrow(nuint size, long offset, string what)
    {
        nint p = Libc.Mmap(0, size, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED | Libc.MAP_POPULATE, _fd, offset);
        if (p == Libc.MAP_FAILED) throw new SysException(what, Errno.Last);
        return p;
    }

    /// <summary>Number of SQEs handed out and not yet submitted.</summary>
    public uint SqPending => _sqeTail - Volatile.Read(ref *_sqHead);

    /// <summary>Free SQ slots.</summary>
    public uint SqSpace => SqEntries - (_sqeTail - Volatile.Read(ref *_sqHead));

    /// <summary>
    /// Next free SQE, zeroed, or a null ref when the SQ is full (check with Unsafe.IsNullRef; then submit).
    /// </summary>
    public ref io_uring_sqe GetSqe()
    {
        // Load-acquire of the kernel's head: it publishes consumed slots with a store-release.
        uint head = Volatile.Read(ref *_sqHead);
        if (_sqeTail - head >= SqEntries) return ref Unsafe.NullRef<io_uring_sqe>();
        byte* slot = _sqes + (nuint)((_sqeTail & _sqMask) * (uint)_sqeSize);
        _sqeTail++;
        Unsafe.InitBlockUnaligned(slot, 0, (uint)_sqeSize);
        return ref *(io_uring_sqe*)slot;
    }

    /// <summary>The URING_CMD payload of an SQE from this ring: 16 bytes (SQE64) or 80 bytes (SQE128) at offset 48.</summary>
    public Span<byte> CmdPayload(ref io_uring_sqe sqe)
        => new((byte*)Unsafe.AsPointer(ref sqe) + 48, _sqeSize - 48);

    /// <summary>Publishes the local SQ tail and returns how many entries the kernel has yet to consume.</summary>
    private uint FlushSq()
    {
        // Store-release of the tail: the kernel's load-acquire of sq tail must see the SQE contents written above.
        Volatile.Write(ref *_sqTail, _sqeTail);
        return _sqeTail - Volatile.Read(ref *_sqHead);
    }

    /// <summary>The SQ ring's flags word (the kernel sets CQ_OVERFLOW and TASKRUN there).</summary>
    private uint SqFlags => Volatile.Read(ref *_sqFlags);

    /// <summary>Counts an overflow the kernel reports in <paramref name="sqFlags"/> (<see cref="OverflowEvents"/>).</summary>
    private void CountOverflow(uint sqFlags)
    {
        if ((sqFlags & IORING_SQ_CQ_OVERFLOW) != 0) OverflowEvents++;
    }

    /// <summary>The kernel holds CQEs that did not fit the CQ, or task work: only an enter with GETEVENTS delivers them.</summary>
    private static bool NeedsGetEvents(uint sqFlags) => (sqFlags & (IORING_SQ_CQ_OVERFLOW | IORING_SQ_TASKRUN)) != 0;

    /// <summary>Submits pending SQEs without waiting. Returns the number submitted or -errno.</summary>
    public int Submit()
    {
        uint toSubmit = FlushSq();
        uint sqFlags = SqFlags;
        CountOverflow(sqFlags);
        uint flags = 0;
        if (NeedsGetEvents(sqFlags) || (SetupFlags & IORING_SETUP_DEFER_TASKRUN) != 0) flags |= IORING_ENTER_GETEVENTS;
        if (toSubmit == 0 && flags == 0) return 0;
        return Enter(toSubmit, 0, flags, null);
    }

    /// <summary>
    /// Submits pending SQEs and waits for at least <paramref name="waitNr"/> completions in one io_uring_enter.
    /// <paramref name="timeoutNs"/> &lt; 0 waits without limit. Returns submitted count, or -errno
    /// (-ETIME on timeout, -EINTR on a signal). Returns at once if the ring was cancelled.
    /// A call that submitted something reports the count even when the wait timed out (kernel behaviour).
    /// </summary>
    public int SubmitAndWait(uint waitNr, long timeoutNs = -1)
    {
        uint toSubmit = FlushSq();
        if (IsCancelled) waitNr = 0;
        CountOverflow(SqFlags); // this enter passes GETEVENTS anyway, which flushes parked CQEs
        if (timeoutNs < 0) return Enter(toSubmit, waitNr, IORING_ENTER_GETEVENTS, null);

        __kernel_timespec ts;
        ts.tv_sec = timeoutNs / 1_000_000_000;
        ts.tv_nsec = timeoutNs % 1_000_000_000;
        io_uring_getevents_arg arg = default;
        arg.ts = (ulong)&ts;
        return Enter(toSubmit, waitNr, IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG, &arg);
    }

    private int Enter(uint toSubmit, uint waitNr, uint flags, io_uring_getevents_arg* arg)
    {
        long rc = Libc.Syscall6(Libc.SYS_io_uring_enter, _fd, (nint)toSubmit, (nint)waitNr, (nint)flags,
            (nint)arg, arg == null ? 0 : sizeof(io_uring_getevents_arg));
        return rc < 0 ? -Errno.Last : (int)rc;
    }

    /// <summary>Completions waiting in the CQ.</summary>
    public uint CqReady => Volatile.Read(ref *_cqTail) - *_cqHead;

    /// <summary>Hands every available CQE to <paramref name="handler"/> and frees their slots. Returns the count handled.</summary>
    public int DrainCompletions<T>(ref T handler) where T : struct, ICqeHandler
    {
        uint head = *_cqHead;                       // only we write it
        uint tail = Volatile.Read(ref *_cqTail);    // load-acquire: pairs with the kernel's store-release after writing CQEs
        int n = 0;
        for (; head != tail; head++)
        {
            io_uring_cqe* c = _cqes + (head & _cqMask);
            if (c->user_data == CancelUserData && _eventFd >= 0) { _cancelArmed = false; continue; }
            handler.OnCqe(c->user_data, c->res, c->flags);
            n++;
        }
        // Store-release of the head: the kernel may reuse the slots only after we have read them.
        Volatile.Write(ref *_cqHead, head);
        return n;
    }

    /// <summary>Takes one CQE if there is one (the cancel wake-up is consumed silently).</summary>
    public bool TryGetCqe(out io_uring_cqe cqe)
    {
        while (true)
        {
            uint head = *_cqHead;
            if (head == Volatile.Read(ref *_cqTail)) { cqe = default; return false; }
            cqe = _cqes[head & _cqMask];
            Volatile.Write(ref *_cqHead, head + 1);
            if (cqe.user_data == CancelUserData && _eventFd >= 0) { _cancelArmed = false; continue; }
            return true;
        }
    }

    /// <summary>
    /// Waits for one CQE (submitting anything pending), retrying EINTR. Returns 0 with a CQE, or -errno
    /// (-ECANCELED once <see cref="Cancel"/> was called, -ETIME on timeout).
    /// </summary>
    public int WaitCqe(out io_uring_cqe cqe, long timeoutNs = -1)
    {
        while (true)
        {
            if (TryGetCqe(out cqe)) return 0;
            if (IsCancelled) return -Errno.ECANCELED;
            // An io_uring_enter that submits returns the count submitted, not -ETIME: submitting and waiting in
            // one call would time out silently and the loop would wait a second full timeout. Submit first.
            if (timeoutNs >= 0 && SqPending != 0) Submit();
            int rc = SubmitAndWait(1, timeoutNs);
            if (rc < 0 && rc != -Errno.EINTR)
            {
                if (TryGetCqe(out cqe)) return 0;
                return rc;
            }
        }
    }

    /// <summary>
    /// Wakes the owner thread and makes <see cref="IsCancelled"/> true. Safe from any thread at any time, also
    /// during or after <see cref="Dispose"/> (then it does nothing but set the flag). The owner must check
    /// IsCancelled each loop iteration, since a busy CQ may keep it from ever blocking.
    /// </summary>
    public void Cancel()
    {
        Volatile.Write(ref _cancelled, 1);
        if (_eventFd < 0) return;
        // The check and the write hold _fdLock, and so does Dispose's close: without it, Dispose could close the
        // eventfd between the two, another thread's open() could get the same number, and our 8 bytes would go to
        // that file. Cancel is rare (once per stop) and never on the data path, so a lock is cheap here.
        lock (_fdLock)
        {
            if (_disposed != 0) return;
            ulong one = 1;
            Libc.Write(_eventFd, &one, 8);
        }
    }

    /// <summary>Queues the eventfd read that a <see cref="Cancel"/> completes. Called by the owner thread.</summary>
    private void ArmCancel()
    {
        if (_cancelArmed || _eventFd < 0) return;
        ref io_uring_sqe sqe = ref GetSqe();
        if (Unsafe.IsNullRef(ref sqe)) return;
        PrepRead(ref sqe, _eventFd, (ulong)_eventBuf, 8, 0);
        sqe.user_data = CancelUserData;
        _cancelArmed = true;
    }

    public void RegisterFiles(ReadOnlySpan<int> fds)
    {
        fixed (int* p = fds)
        {
            long rc = Libc.Syscall6(Libc.SYS_io_uring_register, _fd, (nint)IORING_REGISTER_FILES, (nint)p, fds.Length, 0, 0);
            SysException.Check(rc, "io_uring_register(FILES)");
        }
    }

    public void RegisterBuffers(ReadOnlySpan<iovec> iovs)
    {
        fixed (iovec* p = iovs)
        {
            long rc = Libc.Syscall6(Libc.SYS_io_uring_register, _fd, (nint)IORING_REGISTER_BUFFERS, (nint)p, iovs.Length, 0, 0);
            SysException.Check(rc, "io_uring_register(BUFFERS)");
        }
    }

    /// <summary>
    /// A table of <paramref name="count"/> empty fixed-buffer slots (IORING_REGISTER_BUFFERS2, sparse): ublk's zero copy
    /// installs each request's pages in one (REGISTER_IO_BUF, or the kernel itself with AUTO_BUF_REG).
    /// </summary>
    public void RegisterSparseBuffers(uint count)
    {
        io_uring_rsrc_register reg = default;
        reg.nr = count;
        reg.flags = IORING_RSRC_REGISTER_SPARSE;
        long rc = Libc.Syscall6(Libc.SYS_io_uring_register, _fd, (nint)IORING_REGISTER_BUFFERS2, (nint)(&reg), sizeof(io_uring_rsrc_register), 0, 0);
        SysException.Check(rc, "io_uring_register(BUFFERS2, " + count + " sparse)");
    }

    // ---- prep helpers: they only fill an SQE (which GetSqe zeroed) ----

    public static void PrepNop(ref io_uring_sqe sqe, ulong userData)
    {
        sqe.opcode = IORING_OP_NOP;
        sqe.user_data = userData;
    }

    public static void PrepRw(ref io_uring_sqe sqe, byte op, int fd, ulong addr, uint len, ulong offset)
    {
        sqe.opcode = op;
        sqe.fd = fd;
        sqe.addr = addr;
        sqe.len = len;
        sqe.off = offset;
    }

    public static void PrepRead(ref io_uring_sqe sqe, int fd, ulong addr, uint len, ulong offset)
        => PrepRw(ref sqe, IORING_OP_READ, fd, addr, len, offset);

    public static void PrepWrite(ref io_uring_sqe sqe, int fd, ulong addr, uint len, ulong offset)
        => PrepRw(ref sqe, IORING_OP_WRITE, fd, addr, len, offset);

    public static void PrepReadFixed(ref io_uring_sqe sqe, int fd, ulong addr, uint len, ulong offset, ushort bufIndex)
    {
        PrepRw(ref sqe, IORING_OP_READ_FIXED, fd, addr, len, offset);
        sqe.buf_index = bufIndex;
    }

    public static void PrepWriteFixed(ref io_uring_sqe sqe, int fd, ulong addr, uint len, ulong offset, ushort bufIndex)
    {
        PrepRw(ref sqe, IORING_OP_WRITE_FIXED, fd, addr, len, offset);
        sqe.buf_index = bufIndex;
    }

    public static void PrepFsync(ref io_uring_sqe sqe, int fd, uint fsyncFlags)
    {
        sqe.opcode = IORING_OP_FSYNC;
        sqe.fd = fd;
        sqe.fsync_flags = fsyncFlags;
    }

    public static void PrepFallocate(ref io_uring_sqe sqe, int fd, int mode, ulong offset, ulong len)
    {
        // The kernel takes the mode from len and the length from addr for this opcode.
        sqe.opcode = IORING_OP_FALLOCATE;
        sqe.fd = fd;
        sqe.off = offset;
        sqe.addr = len;
        sqe.len = (uint)mode;
    }

    /// <summary>IORING_OP_SENDMSG of *<paramref name="msg"/> on a socket; the header and its iovecs must stay valid until the CQE.</summary>
    public static void PrepSendMsg(ref io_uring_sqe sqe, int fd, void* msg, uint msgFlags)
    {
        sqe.opcode = IORING_OP_SENDMSG;
        sqe.fd = fd;
        sqe.addr = (ulong)msg;
        sqe.len = 1;
        sqe.msg_flags = msgFlags;
    }

    /// <summary>IORING_OP_RECV of up to <paramref name="len"/> bytes from a socket into <paramref name="addr"/>.</summary>
    public static void PrepRecv(ref io_uring_sqe sqe, int fd, ulong addr, uint len, uint msgFlags)
    {
        sqe.opcode = IORING_OP_RECV;
        sqe.fd = fd;
        sqe.addr = addr;
        sqe.len = len;
        sqe.msg_flags = msgFlags;
    }

    /// <summary>
    /// IORING_OP_TIMEOUT: completes with -ETIME after *<paramref name="ts"/> (relative unless flags say otherwise), or
    /// with 0 once <paramref name="count"/> other completions arrived (0: time only). The kernel reads *ts when it
    /// issues the SQE, so it must stay valid until the next submit.
    /// </summary>
    public static void PrepTimeout(ref io_uring_sqe sqe, __kernel_timespec* ts, uint count, uint flags)
    {
        sqe.opcode = IORING_OP_TIMEOUT;
        sqe.fd = -1;
        sqe.addr = (ulong)ts;
        sqe.len = 1;
        sqe.off = count;
        sqe.timeout_flags = flags;
    }

    /// <summary>IORING_OP_ASYNC_CANCEL of the request whose user_data is <paramref name="target"/>.</summary>
    public static void PrepCancel(ref io_uring_sqe sqe, ulong target, ulong userData)
    {
        sqe.opcode = IORING_OP_ASYNC_CANCEL;
        sqe.fd = -1;
        sqe.addr = target;
        sqe.user_data = userData;
    }

    /// <summary>IORING_OP_URING_CMD; write the command struct into <see cref="CmdPayload"/> afterwards.</summary>
    public static void PrepUringCmd(ref io_uring_sqe sqe, int fd, uint cmdOp)
    {
        sqe.opcode = IORING_OP_URING_CMD;
        sqe.fd = fd;
        sqe.cmd_op = cmdOp;
    }

    private int _disposed;
    private readonly Lock _fdLock = new(); // Cancel's eventfd write against Dispose's close

    /// <summary>Unmaps the rings and closes the fds. The owner thread must have stopped using the ring; Cancel may race it.</summary>
    public void Dispose()
    {
        lock (_fdLock)
        {
            if (_disposed != 0) return;
            _disposed = 1;
        }
        if (_sqesPtr != 0) Libc.Munmap(_sqesPtr, _sqesSize);
        if (_cqPtr != 0 && _cqPtr != _ringPtr) Libc.Munmap(_cqPtr, _cqSize);
        if (_ringPtr != 0) Libc.Munmap(_ringPtr, _ringSize);
        if (_fd >= 0) { Libc.Close(_fd); _fd = -1; }
        if (_eventFd >= 0) Libc.Close(_eventFd);
        if (_eventBuf != null) System.Runtime.InteropServices.NativeMemory.AlignedFree(_eventBuf);
        GC.SuppressFinalize(this);
    }
}
