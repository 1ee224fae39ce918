using System;
using System.Text;
using Ublk.Aot.Interop;

namespace Ublk.Aot.Cli;

/// <summary>
/// The service manager's readiness protocol, spoken without libsystemd (sd_notify(3), "NOTIFY_SOCKET"): when the
/// environment has NOTIFY_SOCKET, each notification is one datagram of newline-separated KEY=VALUE assignments sent
/// to that AF_UNIX socket. The value is a filesystem path ("/run/systemd/notify") or, when it starts with '@', a
/// name in the abstract namespace: the '@' becomes a NUL byte and the address length covers exactly the name (an
/// abstract name is not NUL-terminated; its length is part of it). Without the variable nothing is sent. Sends are
/// best effort, as in sd_notify: a failure is reported once on stderr and never stops the server.
/// <para>What ublk-aot sends: READY=1 with a STATUS= line once /dev/ublkbN is live (after START_DEV, or after
/// END_USER_RECOVERY for a recovered device); STOPPING=1 when it begins to shut down. MAINPID= is not sent: the
/// sender is always the unit's main process (ExecStart's pid; an `upgrade` execs its new server in place, so that
/// pid does not change either), and NotifyAccess=main takes messages from that pid only.</para>
/// <para>NOTIFY_SOCKET is left in the environment: the only program serve starts in place of itself is the same
/// server (exec keeps the pid), which must notify the same socket.</para>
/// </summary>
public static unsafe class SdNotify
{
    public const string Variable = "NOTIFY_SOCKET";

    private static bool s_warned;

    /// <summary>Sends <paramref name="state"/> to $NOTIFY_SOCKET; false when the variable is unset or the send failed.</summary>
    public static bool Notify(string state)
    {
        string? socket = Environment.GetEnvironmentVariable(Variable);
        if (string.IsNullOrEmpty(socket)) return false;
        int rc = Send(socket, state);
        if (rc < 0 && !s_warned)
        {
            s_warned = true;
            Console.Error.WriteLine("ublk-aot: cannot notify the service manager at " + Variable + "=" + socket + ": " + Errno.Name(rc));
        }
        return rc == 0;
    }

    /// <summary>One datagram with <paramref name="state"/> to the socket named as in NOTIFY_SOCKET; 0 or -errno.</summary>
    public static int Send(string socket, string state)
    {
        if (!Address(socket, out Libc.SockAddrUn addr, out uint len)) return -Errno.EINVAL;
        byte[] payload = Encoding.UTF8.GetBytes(state);
        int fd = Libc.Socket(Libc.AF_UNIX, Libc.SOCK_DGRAM | Libc.SOCK_CLOEXEC, 0);
        if (fd < 0) return -Errno.Last;
        try
        {
            fixed (byte* p = payload)
            {
                nint n = Libc.SendTo(fd, p, (nuint)payload.Length, Libc.MSG_NOSIGNAL, &addr, len);
                if (n < 0) return -Errno.Last;
                return n == payload.Length ? 0 : -Errno.EIO;
            }
        }
        finally { Libc.Close(fd); }
    }

    /// <summary>
    /// The sockaddr_un of a NOTIFY_SOCKET value and its length: "/path" (NUL-terminated, length up to and including
    /// the NUL) or "@name" (abstract: a leading NUL, then the name, length = family + NUL + name). Anything else
    /// (a relative path, the "vsock:" form of newer managers, a name too long) → false.
    /// </summary>
    internal static bool Address(string socket, out Libc.SockAddrUn addr, out uint len)
    {
        addr = default;
        len = 0;
        if (socket.Length < 2 || (socket[0] != '/' && socket[0] != '@')) return false;
        byte[] b = Encoding.UTF8.GetBytes(socket);
        bool isAbstract = b[0] == (byte)'@';
        // 108 bytes of sun_path: a path needs its NUL; an abstract name may use all 108 (its first is the NUL).
        if (b.Length > (isAbstract ? 108 : 107)) return false;
        addr.Family = Libc.AF_UNIX;
        for (int i = 0; i < b.Length; i++) addr.Path[i] = b[i];
        if (isAbstract) addr.Path[0] = 0;
        len = (uint)(sizeof(ushort) + b.Length + (isAbstract ? 0 : 1));
        return true;
    }
}
