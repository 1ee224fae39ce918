using System;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using Ublk.Aot.Interop;

namespace Ublk.Aot.Backends;

/// <summary>
/// The client side of NBD's fixed newstyle handshake (doc/proto.md, "Fixed newstyle negotiation", "NBD_OPT_INFO
/// and NBD_OPT_GO"), blocking, under one deadline: connect, read NBDMAGIC/IHAVEOPT and the handshake flags, send
/// the client flags, ask for structured replies, then NBD_OPT_INFO (a probe: learn the export, then NBD_OPT_ABORT)
/// or NBD_OPT_GO (enter transmission on this socket), both with an NBD_INFO_BLOCK_SIZE request, so the size
/// constraints the server gives are ours to obey. Every failure is a <see cref="SpecException"/> naming the
/// server and what went wrong, in one line. Not the data path: run at start-up and on reconnect.
/// </summary>
public static unsafe class NbdHandshake
{
    /// <summary>Connects, learns the export with NBD_OPT_INFO, and leaves with NBD_OPT_ABORT (a soft disconnect).</summary>
    public static NbdExport Probe(NbdUri uri, TimeSpan timeout)
    {
        int fd = Negotiate(uri, timeout, go: false, out NbdExport export);
        Libc.Close(fd);
        return export;
    }

    /// <summary>Connects and enters transmission with NBD_OPT_GO; returns the socket (non-blocking, close-on-exec).</summary>
    public static int Go(NbdUri uri, TimeSpan timeout, out NbdExport export) => Negotiate(uri, timeout, go: true, out export);

    private static int Negotiate(NbdUri uri, TimeSpan timeout, bool go, out NbdExport export)
    {
        var deadline = Stopwatch.StartNew();
        int fd = Dial(uri, timeout, deadline);
        try
        {
            var io = new Io(fd, uri, timeout, deadline);
            Span<byte> b = stackalloc byte[20];
            io.Read(b[..18], "the greeting");
            if (BinaryPrimitives.ReadUInt64BigEndian(b) != NbdWire.InitPasswd)
                throw io.Fail("is not an NBD server (no NBDMAGIC greeting)");
            if (BinaryPrimitives.ReadUInt64BigEndian(b[8..]) != NbdWire.OptMagic)
                throw io.Fail("speaks only the old-style NBD handshake, which has no way to name an export or report errors");
            ushort hflags = BinaryPrimitives.ReadUInt16BigEndian(b[16..]);
            if ((hflags & NbdWire.FlagFixedNewstyle) == 0)
                throw io.Fail("does not offer the fixed newstyle handshake (NBD_FLAG_FIXED_NEWSTYLE)");
            uint cflags = NbdWire.ClientFixedNewstyle | ((hflags & NbdWire.FlagNoZeroes) != 0 ? NbdWire.ClientNoZeroes : 0);
            BinaryPrimitives.WriteUInt32BigEndian(b, cflags);
            io.Write(b[..4]);

            // Structured replies: a READ's error can be reported without the stream losing its framing.
            SendOption(ref io, NbdWire.OptStructuredReply, []);
            (uint type, byte[] data) = ReadReply(ref io, NbdWire.OptStructuredReply);
            bool structured = type == NbdWire.RepAck;
            if (!structured && type != NbdWire.RepErrUnsup) throw io.Fail("refused structured replies: " + Describe(type, data));

            byte[] name = Encoding.UTF8.GetBytes(uri.Export);
            byte[] opt = new byte[4 + name.Length + 2 + 2];
            BinaryPrimitives.WriteUInt32BigEndian(opt, (uint)name.Length);
            name.CopyTo(opt, 4);
            BinaryPrimitives.WriteUInt16BigEndian(opt.AsSpan(4 + name.Length), 1);
            BinaryPrimitives.WriteUInt16BigEndian(opt.AsSpan(6 + name.Length), NbdWire.InfoBlockSize);
            uint option = go ? NbdWire.OptGo : NbdWire.OptInfo;
            SendOption(ref io, option, opt);
            ulong size = 0;
            ushort tflags = 0;
            bool haveExport = false;
            uint min = 1, preferred = 4096, max = 32u << 20;
            while (true)
            {
                (type, data) = ReadReply(ref io, option);
                if (type == NbdWire.RepInfo)
                {
                    if (data.Length < 2) throw io.Fail("sent an information reply without its type");
                    ushort info = BinaryPrimitives.ReadUInt16BigEndian(data);
                    if (info == NbdWire.InfoExport)
                    {
                        if (data.Length != 12) throw io.Fail("sent NBD_INFO_EXPORT of " + data.Length + " bytes, not 12");
                        size = BinaryPrimitives.ReadUInt64BigEndian(data.AsSpan(2));
                        tflags = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(10));
                        haveExport = true;
                    }
                    else if (info == NbdWire.InfoBlockSize)
                    {
                        if (data.Length != 14) throw io.Fail("sent NBD_INFO_BLOCK_SIZE of " + data.Length + " bytes, not 14");
                        min = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(2));
                        preferred = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(6));
                        max = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(10));
                        if (min == 0 || (min & (min - 1)) != 0 || min > 65536 || preferred < min || max < preferred)
                            throw io.Fail("sent block sizes that break the protocol's rules: minimum " + min + ", preferred " + preferred + ", maximum " + max);
                    }
                    // Other information types are ignored (MUST).
                    continue;
                }
                if (type == NbdWire.RepAck) break;
                if ((type & NbdWire.RepErrorBit) != 0)
                    throw new SpecException("nbd: " + uri.Where + (uri.Export.Length > 0 ? " export '" + uri.Export + "'" : " (default export)") + ": " + Describe(type, data));
                throw io.Fail("sent reply type " + type + " to " + (go ? "NBD_OPT_GO" : "NBD_OPT_INFO"));
            }
            if (!haveExport) throw io.Fail("accepted the export without describing it (no NBD_INFO_EXPORT)");
            if ((tflags & NbdWire.TxHasFlags) == 0) throw io.Fail("sent transmission flags without NBD_FLAG_HAS_FLAGS");
            export = new NbdExport(size, tflags, min, preferred, max, structured);
            if (!go)
            {
                // A soft disconnect; the server's ACK to it is optional to wait for.
                SendOption(ref io, NbdWire.OptAbort, []);
            }
            return fd;
        }
        catch
        {
            Libc.Close(fd);
            throw;
        }
    }

    private static string Describe(uint type, byte[] data)
    {
        string text = NbdWire.ReplyName(type);
        if (data.Length > 0 && (type & NbdWire.RepErrorBit) != 0)
        {
            string msg = Encoding.UTF8.GetString(data).Trim();
            int nl = msg.IndexOfAny(['\r', '\n']);
            if (nl >= 0) msg = msg[..nl];
            if (msg.Length > 0) text += ": " + msg;
        }
        return text;
    }

    private static void SendOption(ref Io io, uint option, ReadOnlySpan<byte> data)
    {
        Span<byte> h = stackalloc byte[16];
        BinaryPrimitives.WriteUInt64BigEndian(h, NbdWire.OptMagic);
        BinaryPrimitives.WriteUInt32BigEndian(h[8..], option);
        BinaryPrimitives.WriteUInt32BigEndian(h[12..], (uint)data.Length);
        io.Write(h);
        if (data.Length > 0) io.Write(data);
    }

    private static (uint Type, byte[] Data) ReadReply(ref Io io, uint option)
    {
        Span<byte> h = stackalloc byte[20];
        io.Read(h, "an option reply");
        if (BinaryPrimitives.ReadUInt64BigEndian(h) != NbdWire.OptReplyMagic) throw io.Fail("sent a bad option reply (magic)");
        if (BinaryPrimitives.ReadUInt32BigEndian(h[8..]) != option) throw io.Fail("answered another option than the one asked");
        uint type = BinaryPrimitives.ReadUInt32BigEndian(h[12..]);
        uint len = BinaryPrimitives.ReadUInt32BigEndian(h[16..]);
        if (len > 1 << 20) throw io.Fail("sent an option reply of " + len + " bytes");
        byte[] data = new byte[len];
        if (len > 0) io.Read(data, "an option reply");
        return (type, data);
    }

    /// <summary>A non-blocking connect to the URI's address, finished within the deadline.</summary>
    private static int Dial(NbdUri uri, TimeSpan timeout, Stopwatch deadline)
    {
        int family = uri.IsUnix ? Libc.AF_UNIX : uri.Family;
        int fd = Libc.Socket(family, Libc.SOCK_STREAM | Libc.SOCK_CLOEXEC | Libc.SOCK_NONBLOCK, 0);
        if (fd < 0) throw new SpecException("nbd: " + uri.Where + ": socket: " + Errno.Name(Errno.Last));
        try
        {
            int rc;
            if (uri.IsUnix)
            {
                Libc.SockAddrUn un = default;
                un.Family = Libc.AF_UNIX;
                byte[] p = Encoding.UTF8.GetBytes(uri.SocketPath!);
                for (int i = 0; i < p.Length; i++) un.Path[i] = p[i];
                // A path's length includes its NUL; an abstract name (leading NUL) is exactly its bytes.
                uint len = (uint)(sizeof(ushort) + p.Length + (p[0] == 0 ? 0 : 1));
                rc = Libc.ConnectAddr(fd, &un, len);
            }
            else
            {
                ushort portBE = (ushort)((uri.Port >> 8) | ((uri.Port & 0xff) << 8));
                if (uri.Family == Libc.AF_INET)
                {
                    Libc.SockAddrIn a = default;
                    a.Family = Libc.AF_INET;
                    a.PortBE = portBE;
                    for (int i = 0; i < 4; i++) a.Addr[i] = uri.Address![i];
                    rc = Libc.ConnectAddr(fd, &a, (uint)sizeof(Libc.SockAddrIn));
                }
                else
                {
                    Libc.SockAddrIn6 a = default;
                    a.Family = Libc.AF_INET6;
                    a.PortBE = portBE;
                    for (int i = 0; i < 16; i++) a.Addr[i] = uri.Address![i];
                    rc = Libc.ConnectAddr(fd, &a, (uint)sizeof(Libc.SockAddrIn6));
                }
            }
            int e = rc != 0 ? Errno.Last : 0; // read before any other call can change it
            if (!uri.IsUnix)
            {
                int one = 1;
                Libc.SetSockOpt(fd, Libc.IPPROTO_TCP, Libc.TCP_NODELAY, &one, 4);
            }
            if (rc != 0)
            {
                if (e != Errno.EINPROGRESS && e != Errno.EAGAIN) throw new SpecException("nbd: cannot connect to " + uri.Where + ": " + Errno.Name(e));
                if (!Wait(fd, Libc.POLLOUT, timeout, deadline)) throw new SpecException("nbd: cannot connect to " + uri.Where + ": no answer within " + timeout.TotalSeconds + " s");
                int err = 0;
                uint elen = 4;
                Libc.GetSockOpt(fd, Libc.SOL_SOCKET, Libc.SO_ERROR, &err, &elen);
                if (err != 0) throw new SpecException("nbd: cannot connect to " + uri.Where + ": " + Errno.Name(err));
            }
            return fd;
        }
        catch
        {
            Libc.Close(fd);
            throw;
        }
    }

    private static bool Wait(int fd, int events, TimeSpan timeout, Stopwatch deadline)
    {
        while (true)
        {
            long left = (long)timeout.TotalMilliseconds - deadline.ElapsedMilliseconds;
            if (left <= 0) return false;
            Libc.PollFd p = default;
            p.Fd = fd;
            p.Events = (short)events;
            int n = Libc.Poll(&p, 1, (int)Math.Min(left, int.MaxValue));
            if (n > 0) return true;
            if (n < 0 && Errno.Last != Errno.EINTR) return false;
        }
    }

    /// <summary>Whole reads and writes on the non-blocking socket under the handshake's deadline.</summary>
    private ref struct Io(int fd, NbdUri uri, TimeSpan timeout, Stopwatch deadline)
    {
        public readonly SpecException Fail(string what) => new("nbd: the server at " + uri.Where + " " + what);

        public readonly void Read(Span<byte> into, string what)
        {
            int done = 0;
            while (done < into.Length)
            {
                nint n;
                fixed (byte* p = into) n = Libc.Recv(fd, p + done, (nuint)(into.Length - done), 0);
                if (n > 0) { done += (int)n; continue; }
                if (n == 0) throw Fail("closed the connection during the handshake, waiting for " + what);
                int e = Errno.Last;
                if (e == Errno.EINTR) continue;
                if (e != Errno.EAGAIN) throw Fail("connection failed during the handshake: " + Errno.Name(e));
                if (!Wait(fd, Libc.POLLIN, timeout, deadline)) throw Fail("sent nothing within " + timeout.TotalSeconds + " s, waiting for " + what);
            }
        }

        public readonly void Write(ReadOnlySpan<byte> data)
        {
            int done = 0;
            while (done < data.Length)
            {
                nint n;
                fixed (byte* p = data) n = Libc.Send(fd, p + done, (nuint)(data.Length - done), Libc.MSG_NOSIGNAL);
                if (n > 0) { done += (int)n; continue; }
                int e = Errno.Last;
                if (e == Errno.EINTR) continue;
                if (e != Errno.EAGAIN) throw Fail("connection failed during the handshake: " + Errno.Name(e));
                if (!Wait(fd, Libc.POLLOUT, timeout, deadline)) throw Fail("took nothing within " + timeout.TotalSeconds + " s");
            }
        }
    }
}
