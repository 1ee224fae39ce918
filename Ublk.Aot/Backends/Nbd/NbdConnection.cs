using System;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Ublk.Aot.Abi;
using Ublk.Aot.Interop;
using Ublk.Aot.Ring;
using Ublk.Aot.Ublk;
using static Ublk.Aot.Abi.UblkConst;

namespace Ublk.Aot.Backends;

/// <summary>
/// One queue's NBD connection, driven entirely by SQEs on the queue's own io_uring (doc/proto.md, "Transmission"):
/// <list type="bullet">
/// <item>Sends: one IORING_OP_SENDMSG in flight at a time, gathering every request queued meanwhile (header, and a
/// WRITE's payload straight from its tag buffer) into one message; a short send is continued from where it
/// stopped. One at a time because two sends in flight on one stream could interleave their bytes.</item>
/// <item>Receives: one IORING_OP_RECV in flight, into a staging buffer that is parsed for as many replies as it
/// holds; a READ's payload is copied into its tag buffer, or received straight into it when much is left.</item>
/// <item>Replies are matched by cookie, (generation &lt;&lt; 16) | tag: a cookie of no request in flight is a
/// protocol error.</item>
/// <item>Connection loss (an error or end of stream on either side, a protocol error, NBD_ESHUTDOWN) keeps every
/// request in flight. The socket is shut down, and once both SQEs are back it is closed and the handshake is done
/// again (blocking, at most <see cref="AttemptTimeout"/>), then with a TIMEOUT SQE between tries, 100 ms doubling
/// to 2 s. Connected again, every kept request is sent again under a new cookie. After reconnect=SECONDS
/// without a connection the kept requests and every new one fail with EIO, while the tries go on; the device
/// stays, and serves again as soon as a try succeeds.</item>
/// </list>
/// All memory is set up here, at Attach: nothing is allocated per request. Queue thread only.
/// </summary>
public sealed unsafe class NbdConnection : IDisposable
{
    private const byte SubSend = 1, SubRecv = 2, SubTimer = 3;
    private const int RxSize = 128 * 1024;
    /// <summary>A READ payload with at least this much left, and nothing else staged, is received straight into its tag buffer.</summary>
    private const uint DirectRecvMin = 16 * 1024;
    /// <summary>Requests per SENDMSG (two iovecs each, well under IOV_MAX).</summary>
    private const int MaxBatch = 64;
    private const int FirstBackoffMs = 100, MaxBackoffMs = 2000;
    /// <summary>One reconnect try (connect and handshake) blocks the queue thread at most this long.</summary>
    public static readonly TimeSpan AttemptTimeout = TimeSpan.FromSeconds(2);

    private enum Link : byte
    {
        Up,
        /// <summary>Lost: shut down, waiting for the send and receive SQEs to come back before the socket closes.</summary>
        Draining,
        /// <summary>Closed; a try is due when the timer fires. Requests are kept.</summary>
        Waiting,
        /// <summary>As Waiting, past reconnect=SECONDS: requests fail with EIO.</summary>
        Failed,
    }

    private enum ReqState : byte { Idle, Queued, Sent }

    private struct Req
    {
        public ulong Offset;
        public uint Length;
        public ushort Cmd;
        public ushort Flags;
        public uint Gen;
        public int Error;
        public ReqState State;
    }

    private readonly NbdUri _uri;
    private readonly NbdExport _export;
    private readonly UblkQueue _queue;
    private readonly int _depth;
    private readonly Req[] _req;
    private readonly ushort[] _sendQ; // FIFO of tags waiting for a send
    private int _sqHead, _sqCount;
    private bool _structured;

    // Native memory (freed in Dispose): per-tag request headers, the send's iovecs and msghdr, the receive staging
    // buffer, the reconnect timer's timespec.
    private byte* _headers;
    private iovec* _iov;
    private Libc.MsgHdr* _msg;
    private byte* _rx;
    private __kernel_timespec* _ts;

    private int _fd = -1;
    private Link _link;
    private bool _recvArmed, _sendArmed;
    private int _iovFirst, _iovCount;
    private int _rxStart, _rxEnd;
    private bool _directRecv;

    // The payload being received: of reply to _pTag, into its tag buffer at _pDst (-1: discarded), _pLeft bytes left;
    // _pDone: the reply's last chunk, so the request completes when it is in.
    private int _pTag = -1;
    private int _pDst;
    private uint _pLeft;
    private bool _pDone;

    private long _outageStart;
    private int _backoffMs;
    private string? _firstFailure;

    /// <summary>Connects (blocking, on the queue thread, before any I/O) and enters transmission.</summary>
    public NbdConnection(NbdUri uri, NbdExport export, UblkQueue queue)
    {
        _uri = uri;
        _export = export;
        _queue = queue;
        _depth = queue.Depth;
        _req = new Req[_depth];
        _sendQ = new ushort[_depth];
        try
        {
            _headers = (byte*)NativeMemory.AllocZeroed((nuint)(_depth * NbdWire.RequestSize));
            _iov = (iovec*)NativeMemory.AllocZeroed((nuint)(2 * MaxBatch * sizeof(iovec)));
            _msg = (Libc.MsgHdr*)NativeMemory.AllocZeroed((nuint)sizeof(Libc.MsgHdr));
            _rx = (byte*)NativeMemory.Alloc(RxSize);
            _ts = (__kernel_timespec*)NativeMemory.AllocZeroed((nuint)sizeof(__kernel_timespec));
            int fd = NbdHandshake.Go(uri, NbdSpec.ConnectTimeout, out NbdExport now);
            if (Changed(now) is { } why)
            {
                Libc.Close(fd);
                throw new SpecException("nbd: " + uri.Where + ": " + why + " since it was probed");
            }
            Up(fd, now);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Reconnects so far (for the log and tests).</summary>
    public int Reconnects { get; private set; }

    public int Submit(ushort tag, in ublksrv_io_desc iod)
    {
        ref Req r = ref _req[tag];
        r.Offset = iod.start_sector << 9;
        r.Length = iod.nr_sectors << 9;
        r.Flags = (iod.op_flags & UBLK_IO_F_FUA) != 0 && _export.Fua ? NbdWire.CmdFlagFua : (ushort)0;
        switch (iod.Op)
        {
            case UBLK_IO_OP_READ: r.Cmd = NbdWire.CmdRead; r.Flags = 0; break;
            case UBLK_IO_OP_WRITE: r.Cmd = NbdWire.CmdWrite; break;
            case UBLK_IO_OP_FLUSH:
                if (!_export.Flush) return 0; // no volatile cache was claimed: nothing to flush
                r.Cmd = NbdWire.CmdFlush; r.Flags = 0; r.Offset = 0; r.Length = 0;
                break;
            case UBLK_IO_OP_DISCARD:
                if (!_export.Trim) return -Errno.EOPNOTSUPP;
                r.Cmd = NbdWire.CmdTrim; r.Flags = 0;
                break;
            case UBLK_IO_OP_WRITE_ZEROES:
                if (!_export.WriteZeroes) return -Errno.EOPNOTSUPP;
                r.Cmd = NbdWire.CmdWriteZeroes;
                if ((iod.op_flags & UBLK_IO_F_NOUNMAP) != 0) r.Flags |= NbdWire.CmdFlagNoHole;
                break;
            default:
                return -Errno.EOPNOTSUPP;
        }
        if (r.Cmd != NbdWire.CmdFlush && (r.Offset > _export.Size || r.Length > _export.Size - r.Offset)) return -Errno.EINVAL;
        if (_link == Link.Failed) return -Errno.EIO;
        r.Error = 0;
        r.State = ReqState.Queued;
        _sendQ[(_sqHead + _sqCount) % _depth] = tag;
        _sqCount++;
        PumpSend();
        return Backend.Pending;
    }

    public void OnCqe(byte subOp, int res)
    {
        switch (subOp)
        {
            case SubSend: OnSend(res); break;
            case SubRecv: OnRecv(res); break;
            case SubTimer: OnTimer(res); break;
        }
    }

    // ---- sending ----

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Cookie(int tag, uint gen) => ((ulong)gen << 16) | (uint)tag;

    private void PumpSend()
    {
        if (_sendArmed || _link != Link.Up || _sqCount == 0) return;
        iovec* v = _iov;
        for (int n = 0; n < MaxBatch && _sqCount > 0; n++)
        {
            ushort tag = _sendQ[_sqHead];
            _sqHead = (_sqHead + 1) % _depth;
            _sqCount--;
            ref Req r = ref _req[tag];
            r.Gen++;
            r.State = ReqState.Sent;
            byte* h = _headers + tag * NbdWire.RequestSize;
            NbdWire.WriteRequest(new Span<byte>(h, NbdWire.RequestSize), r.Flags, r.Cmd, Cookie(tag, r.Gen), r.Offset, r.Length);
            v->iov_base = (nint)h;
            v->iov_len = NbdWire.RequestSize;
            v++;
            if (r.Cmd == NbdWire.CmdWrite && r.Length > 0)
            {
                v->iov_base = (nint)_queue.Buffers!.Address(tag);
                v->iov_len = r.Length;
                v++;
            }
        }
        _iovFirst = 0;
        _iovCount = (int)(v - _iov);
        ArmSend();
    }

    private void ArmSend()
    {
        _msg->Iov = (nint)(_iov + _iovFirst);
        _msg->IovLen = (nuint)_iovCount;
        ref io_uring_sqe sqe = ref _queue.GetTargetSqe(UblkQueue.OwnTag, SubSend);
        if (Unsafe.IsNullRef(ref sqe)) return;
        IoUring.PrepSendMsg(ref sqe, _fd, _msg, Libc.MSG_NOSIGNAL);
        _sendArmed = true;
    }

    private void OnSend(int res)
    {
        _sendArmed = false;
        if (_link != Link.Up) { Drained(); return; }
        if (res == -Errno.EAGAIN || res == -Errno.EINTR) { ArmSend(); return; }
        if (res <= 0) { Lost(res == 0 ? "the send made no progress" : "send: " + Errno.Name(-res)); return; }
        nuint left = (nuint)res;
        while (left > 0 && _iovCount > 0)
        {
            iovec* v = _iov + _iovFirst;
            if (left >= v->iov_len)
            {
                left -= v->iov_len;
                _iovFirst++;
                _iovCount--;
            }
            else
            {
                v->iov_base += (nint)left;
                v->iov_len -= left;
                left = 0;
            }
        }
        if (_iovCount > 0) ArmSend();
        else PumpSend();
    }

    // ---- receiving ----

    private void ArmRecv()
    {
        ulong addr;
        uint len;
        _directRecv = _pLeft >= DirectRecvMin && _pDst >= 0 && _rxStart == _rxEnd;
        if (_directRecv)
        {
            addr = _queue.Buffers!.Address((ushort)_pTag) + (ulong)_pDst;
            len = _pLeft;
        }
        else
        {
            // What is left staged is at most part of one reply's header: move it to the front.
            if (_rxStart > 0)
            {
                int keep = _rxEnd - _rxStart;
                if (keep > 0) Buffer.MemoryCopy(_rx + _rxStart, _rx, RxSize, keep);
                _rxStart = 0;
                _rxEnd = keep;
            }
            addr = (ulong)(_rx + _rxEnd);
            len = (uint)(RxSize - _rxEnd);
        }
        ref io_uring_sqe sqe = ref _queue.GetTargetSqe(UblkQueue.OwnTag, SubRecv);
        if (Unsafe.IsNullRef(ref sqe)) return;
        IoUring.PrepRecv(ref sqe, _fd, addr, len, 0);
        _recvArmed = true;
    }

    private void OnRecv(int res)
    {
        _recvArmed = false;
        if (_link != Link.Up) { Drained(); return; }
        if (res == -Errno.EAGAIN || res == -Errno.EINTR) { ArmRecv(); return; }
        if (res <= 0) { Lost(res == 0 ? "the server closed the connection" : "recv: " + Errno.Name(-res)); return; }
        if (_directRecv)
        {
            _pDst += res;
            _pLeft -= (uint)res;
            if (_pLeft == 0) EndPayload();
        }
        else _rxEnd += res;
        if (Parse()) ArmRecv();
    }

    /// <summary>Takes every whole reply (and payload bytes) staged. False if the connection was lost on the way.</summary>
    private bool Parse()
    {
        while (true)
        {
            int avail = _rxEnd - _rxStart;
            byte* p = _rx + _rxStart;
            if (_pLeft > 0)
            {
                if (avail == 0) return true;
                int n = (int)Math.Min((uint)avail, _pLeft);
                if (_pDst >= 0)
                {
                    new ReadOnlySpan<byte>(p, n).CopyTo(_queue.Buffers!.Span((ushort)_pTag, _pDst + n).Slice(_pDst));
                    _pDst += n;
                }
                _rxStart += n;
                _pLeft -= (uint)n;
                if (_pLeft > 0) return true;
                EndPayload();
                continue;
            }
            if (avail < 4) return true;
            uint magic = BinaryPrimitives.ReadUInt32BigEndian(new ReadOnlySpan<byte>(p, 4));
            if (magic == NbdWire.SimpleReplyMagic)
            {
                if (avail < NbdWire.SimpleReplySize) return true;
                var h = new ReadOnlySpan<byte>(p, NbdWire.SimpleReplySize);
                uint error = BinaryPrimitives.ReadUInt32BigEndian(h[4..]);
                int tag = Lookup(BinaryPrimitives.ReadUInt64BigEndian(h[8..]));
                if (tag < 0) return Violation("a reply to no request in flight");
                _rxStart += NbdWire.SimpleReplySize;
                ref Req r = ref _req[tag];
                if (error != 0)
                {
                    if (!SetError(ref r, error)) return false;
                    Done(tag);
                    continue;
                }
                if (r.Cmd == NbdWire.CmdRead)
                {
                    // "a simple reply to a read ... when structured replies have been negotiated" is not allowed.
                    if (_structured) return Violation("a simple reply to a READ after structured replies were agreed");
                    BeginPayload(tag, 0, r.Length, done: true);
                    continue;
                }
                Done(tag);
                continue;
            }
            if (magic != NbdWire.StructuredReplyMagic)
                return Violation("a reply with bad magic 0x" + magic.ToString("x8", System.Globalization.CultureInfo.InvariantCulture));
            if (avail < NbdWire.StructuredReplySize) return true;
            {
                var h = new ReadOnlySpan<byte>(p, avail);
                ushort flags = BinaryPrimitives.ReadUInt16BigEndian(h[4..]);
                ushort type = BinaryPrimitives.ReadUInt16BigEndian(h[6..]);
                int tag = Lookup(BinaryPrimitives.ReadUInt64BigEndian(h[8..]));
                uint length = BinaryPrimitives.ReadUInt32BigEndian(h[16..]);
                if (tag < 0) return Violation("a reply chunk for no request in flight");
                bool done = (flags & NbdWire.ReplyFlagDone) != 0;
                ref Req r = ref _req[tag];
                const int H = NbdWire.StructuredReplySize;
                switch (type)
                {
                    case NbdWire.ReplyTypeNone:
                        if (length != 0 || !done) return Violation("an NBD_REPLY_TYPE_NONE chunk with a payload or without DONE");
                        _rxStart += H;
                        Done(tag);
                        continue;
                    case NbdWire.ReplyTypeOffsetData:
                    {
                        if (r.Cmd != NbdWire.CmdRead || length < 8) return Violation("a data chunk that is not a READ's");
                        if (avail < H + 8) return true;
                        ulong off = BinaryPrimitives.ReadUInt64BigEndian(h[H..]);
                        uint data = length - 8;
                        if (off < r.Offset || off - r.Offset > r.Length || data > r.Length - (off - r.Offset))
                            return Violation("a data chunk outside its READ");
                        _rxStart += H + 8;
                        BeginPayload(tag, (int)(off - r.Offset), data, done);
                        continue;
                    }
                    case NbdWire.ReplyTypeOffsetHole:
                    {
                        if (r.Cmd != NbdWire.CmdRead || length != 12) return Violation("a hole chunk that is not a READ's");
                        if (avail < H + 12) return true;
                        ulong off = BinaryPrimitives.ReadUInt64BigEndian(h[H..]);
                        uint size = BinaryPrimitives.ReadUInt32BigEndian(h[(H + 8)..]);
                        if (off < r.Offset || off - r.Offset > r.Length || size > r.Length - (off - r.Offset))
                            return Violation("a hole chunk outside its READ");
                        _queue.Buffers!.Span((ushort)tag, (int)r.Length).Slice((int)(off - r.Offset), (int)size).Clear();
                        _rxStart += H + 12;
                        if (done) Done(tag);
                        continue;
                    }
                    default:
                    {
                        // "an unknown non-error chunk type ... MUST" end the connection; an unknown error type is an error.
                        if ((type & NbdWire.ReplyTypeErrorBit) == 0) return Violation("an unknown reply chunk type " + type);
                        if (length < 6) return Violation("an error chunk shorter than its fields");
                        if (avail < H + 6) return true;
                        uint error = BinaryPrimitives.ReadUInt32BigEndian(h[H..]);
                        ushort msgLen = BinaryPrimitives.ReadUInt16BigEndian(h[(H + 4)..]);
                        if (6u + msgLen > length) return Violation("an error chunk whose message overruns it");
                        if (!SetError(ref r, error == 0 ? 5u : error)) return false;
                        _rxStart += H + 6;
                        BeginPayload(tag, -1, length - 6, done);
                        continue;
                    }
                }
            }
        }
    }

    private void BeginPayload(int tag, int dst, uint length, bool done)
    {
        _pTag = tag;
        _pDst = dst;
        _pLeft = length;
        _pDone = done;
        if (length == 0) EndPayload();
    }

    private void EndPayload()
    {
        int tag = _pTag;
        bool done = _pDone;
        _pTag = -1;
        _pDst = -1;
        _pDone = false;
        if (done) Done(tag);
    }

    /// <summary>The request in flight with <paramref name="cookie"/>, or -1.</summary>
    private int Lookup(ulong cookie)
    {
        int tag = (int)(cookie & 0xFFFF);
        if (tag >= _depth) return -1;
        ref Req r = ref _req[tag];
        return r.State == ReqState.Sent && Cookie(tag, r.Gen) == cookie ? tag : -1;
    }

    /// <summary>Records an NBD error for the request; NBD_ESHUTDOWN (the server is going away) is a lost connection instead.</summary>
    private bool SetError(ref Req r, uint nbdError)
    {
        int errno = NbdWire.ToErrno(nbdError);
        if (errno == -Errno.ESHUTDOWN)
        {
            Lost("the server is shutting down (NBD_ESHUTDOWN)");
            return false;
        }
        if (r.Error == 0) r.Error = errno;
        return true;
    }

    private void Done(int tag)
    {
        ref Req r = ref _req[tag];
        int result = r.Error != 0 ? r.Error : r.Cmd is NbdWire.CmdRead or NbdWire.CmdWrite ? (int)r.Length : 0;
        r.State = ReqState.Idle;
        _queue.Finish((ushort)tag, result);
    }

    private bool Violation(string what)
    {
        Lost("protocol error: the server sent " + what);
        return false;
    }

    // ---- losing and regaining the connection ----

    private void Lost(string why)
    {
        if (_link != Link.Up) return;
        _link = Link.Draining;
        if (_outageStart == 0) _outageStart = Stopwatch.GetTimestamp();
        Console.Error.WriteLine("ublk-aot: nbd queue " + _queue.QueueId + ": lost " + _uri.Where + " (" + why + "); reconnecting for up to " +
            _uri.ReconnectSeconds + " s, requests kept");
        Libc.Shutdown(_fd, Libc.SHUT_RDWR); // completes the receive (and a blocked send) in flight
        Drained();
    }

    /// <summary>Once both SQEs are back after a loss: closes the socket, puts every kept request back in line, tries again.</summary>
    private void Drained()
    {
        if (_link != Link.Draining || _recvArmed || _sendArmed) return;
        Libc.Close(_fd);
        _fd = -1;
        _rxStart = _rxEnd = 0;
        _pTag = -1;
        _pLeft = 0;
        _pDone = false;
        _sqHead = 0;
        _sqCount = 0;
        for (int t = 0; t < _depth; t++)
        {
            if (_req[t].State == ReqState.Idle) continue;
            _req[t].State = ReqState.Queued;
            _sendQ[_sqCount++] = (ushort)t;
        }
        _link = Link.Waiting;
        _backoffMs = 0;
        _firstFailure = null;
        TryReconnect();
    }

    private void TryReconnect()
    {
        string why;
        try
        {
            int fd = NbdHandshake.Go(_uri, AttemptTimeout, out NbdExport now);
            string? changed = Changed(now);
            if (changed == null)
            {
                double ms = Stopwatch.GetElapsedTime(_outageStart).TotalMilliseconds;
                Reconnects++;
                Console.Error.WriteLine("ublk-aot: nbd queue " + _queue.QueueId + ": reconnected to " + _uri.Where + " after " + (long)ms + " ms" +
                    (_link == Link.Failed ? "; serving again" : "; sending " + _sqCount + " kept request(s) again"));
                _outageStart = 0;
                Up(fd, now);
                return;
            }
            Libc.Close(fd);
            why = changed;
        }
        catch (UblkAotException e)
        {
            why = e.Message;
        }
        if (_firstFailure == null)
        {
            _firstFailure = why;
            Console.Error.WriteLine("ublk-aot: nbd queue " + _queue.QueueId + ": reconnect failed: " + why);
        }
        if (_link != Link.Failed && Stopwatch.GetElapsedTime(_outageStart).TotalSeconds >= _uri.ReconnectSeconds)
        {
            _link = Link.Failed;
            int failed = _sqCount;
            _sqCount = 0;
            for (int i = 0; i < failed; i++)
            {
                ushort tag = _sendQ[(_sqHead + i) % _depth];
                _req[tag].State = ReqState.Idle;
                _queue.Finish(tag, -Errno.EIO);
            }
            Console.Error.WriteLine("ublk-aot: nbd queue " + _queue.QueueId + ": no connection to " + _uri.Where + " for " + _uri.ReconnectSeconds +
                " s: " + failed + " request(s) failed with EIO, and every new one fails until a reconnect succeeds (still trying every " +
                MaxBackoffMs / 1000 + " s)");
        }
        _backoffMs = _backoffMs == 0 ? FirstBackoffMs : Math.Min(_backoffMs * 2, MaxBackoffMs);
        ArmTimer(_backoffMs);
    }

    private void ArmTimer(int ms)
    {
        _ts->tv_sec = ms / 1000;
        _ts->tv_nsec = ms % 1000 * 1_000_000L;
        ref io_uring_sqe sqe = ref _queue.GetTargetSqe(UblkQueue.OwnTag, SubTimer);
        if (Unsafe.IsNullRef(ref sqe)) return;
        IoUring.PrepTimeout(ref sqe, _ts, 0, 0);
    }

    private void OnTimer(int res)
    {
        if (res != -Errno.ETIME) return; // cancelled: the ring is going
        if (_link is Link.Waiting or Link.Failed) TryReconnect();
    }

    /// <summary>Why an export seen on a new connection cannot serve this device, or null.</summary>
    private string? Changed(NbdExport now)
    {
        if (now.Size != _export.Size) return "the export is now " + now.Size + " bytes, not " + _export.Size;
        if (now.ReadOnly && !_export.ReadOnly) return "the export is now read-only";
        if ((_export.Flush && !now.Flush) || (_export.Fua && !now.Fua) || (_export.Trim && !now.Trim) || (_export.WriteZeroes && !now.WriteZeroes))
            return "the export no longer offers a command the device relies on (flags 0x" + now.Flags.ToString("x4", System.Globalization.CultureInfo.InvariantCulture) + ")";
        if (now.MaxPayload < _queue.MaxIoBytes) return "the export's maximum payload is now " + now.MaxPayload;
        return null;
    }

    private void Up(int fd, NbdExport now)
    {
        _fd = fd;
        _structured = now.Structured;
        _link = Link.Up;
        ArmRecv();
        PumpSend();
    }

    /// <summary>Ends transmission (NBD_CMD_DISC when nothing is half sent) and frees the memory. Queue thread, after the loop.</summary>
    public void Dispose()
    {
        if (_fd >= 0)
        {
            if (_link == Link.Up && !_sendArmed && _headers != null)
            {
                Span<byte> disc = stackalloc byte[NbdWire.RequestSize];
                NbdWire.WriteRequest(disc, 0, NbdWire.CmdDisc, 0, 0, 0);
                fixed (byte* d = disc) Libc.Send(_fd, d, (nuint)disc.Length, Libc.MSG_NOSIGNAL);
            }
            // Shut down before the memory goes: a receive still armed in the ring can then take no more bytes.
            Libc.Shutdown(_fd, Libc.SHUT_RDWR);
            Libc.Close(_fd);
            _fd = -1;
        }
        NativeMemory.Free(_headers); _headers = null;
        NativeMemory.Free(_iov); _iov = null;
        NativeMemory.Free(_msg); _msg = null;
        NativeMemory.Free(_rx); _rx = null;
        NativeMemory.Free(_ts); _ts = null;
    }
}
