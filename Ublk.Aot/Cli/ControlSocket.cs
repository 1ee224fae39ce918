using System;
using System.Globalization;
using System.IO;
using System.Text;
using System.Threading;
using Ublk.Aot.Interop;

namespace Ublk.Aot.Cli;

/// <summary>
/// A running server's control channel: a unix stream socket /run/ublk-aot/ID.sock (next to the state files, mode
/// 0600), served by one background thread (never a queue thread). The protocol is one request line, one reply line,
/// then the server closes the connection:
/// <code>
///   WORD [ARGS]            e.g. "resize 1073741824"
///   ok [RESULT]            done
///   refused MESSAGE        nothing changed: the request cannot be done as asked (the client exits 2)
///   error MESSAGE          it failed while being done (the client exits 1)
/// </code>
/// Each request word has one handler: "resize BYTES" and "stats" (reply `ok JSON`, see StatsReport.Json).
/// </summary>
public sealed unsafe class ControlSocket : IDisposable
{
    /// <summary>Handles the arguments of one request word; returns the reply line ("ok …", "refused …", "error …").</summary>
    public delegate string Handler(string args);

    private const int MaxLine = 4096;
    private static readonly TimeSpan ClientIdle = TimeSpan.FromSeconds(5);

    private readonly SocketListener _listener;
    private (string Word, Handler Handle)[] _handlers = [];

    public static string PathOf(uint id) => Path.Combine(StateFile.Directory, id.ToString(CultureInfo.InvariantCulture) + ".sock");

    private ControlSocket(SocketListener listener) => _listener = listener;

    /// <summary>
    /// Binds and listens on the socket of device <paramref name="id"/> (a socket left there by a killed or departing
    /// server is replaced). Connections wait in the backlog until <see cref="Start"/>. Throws UsageException.
    /// </summary>
    public static ControlSocket Bind(uint id)
    {
        string path = PathOf(id);
        try { Directory.CreateDirectory(StateFile.Directory); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UsageException("cannot create " + StateFile.Directory + " for the control socket: " + e.Message);
        }
        if (!Libc.UnixAddress(path, out Libc.SockAddrUn addr)) throw new UsageException("control socket path too long: " + path);
        Libc.StatBuf st;
        if (Libc.LStat(path, &st) == 0)
        {
            if ((st.st_mode & Libc.S_IFMT) != Libc.S_IFSOCK) throw new UsageException(path + " exists and is not a socket: remove it");
            File.Delete(path);
        }
        int fd = Libc.Socket(Libc.AF_UNIX, Libc.SOCK_STREAM | Libc.SOCK_CLOEXEC, 0);
        if (fd < 0) throw new SysException("socket(AF_UNIX)", Errno.Last);
        try
        {
            // Bound with the process umask, then 0600; until then only the owner may write (connect) anyway under 022.
            if (Libc.Bind(fd, &addr, (uint)sizeof(Libc.SockAddrUn)) != 0) throw new SysException("bind(" + path + ")", Errno.Last);
            if (Libc.Chmod(path, 0x180 /* 0600 */) != 0) throw new SysException("chmod(" + path + ")", Errno.Last);
            return new ControlSocket(SocketListener.Listen(fd, 8, path, path));
        }
        catch
        {
            Libc.Close(fd);
            try { File.Delete(path); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>Starts answering requests with <paramref name="handlers"/> (request word → handler) on a background thread.</summary>
    public void Start(params (string Word, Handler Handle)[] handlers)
    {
        _handlers = handlers;
        _listener.Start("ublk-control", Serve);
    }

    private void Serve(int c)
    {
        string? line = ReadLine(c, ClientIdle);
        if (line == null) return;
        string reply;
        int sp = line.IndexOf(' ');
        string word = sp < 0 ? line : line[..sp];
        string args = sp < 0 ? "" : line[(sp + 1)..];
        Handler? h = null;
        foreach ((string w, Handler handle) in _handlers) if (w == word) h = handle;
        if (h == null)
        {
            var words = new StringBuilder();
            foreach ((string w, _) in _handlers) words.Append(words.Length == 0 ? "" : ", ").Append(w);
            reply = "refused unknown request '" + word + "' (" + words + ")";
        }
        else
        {
            try { reply = h(args); }
            catch (UblkAotException e) { reply = (e.IsBadInput ? "refused " : "error ") + e.Message; }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidOperationException) { reply = "error " + e.Message; }
        }
        WriteLine(c, OneLine(reply));
    }

    private static string OneLine(string s) => s.Replace('\n', ' ').Replace('\r', ' ');

    /// <summary>One '\n'-terminated line from <paramref name="fd"/>, or null (closed, too long, or idle past <paramref name="idle"/>).</summary>
    private static string? ReadLine(int fd, TimeSpan idle, int maxLine = MaxLine)
    {
        byte[] bytes = new byte[maxLine];
        fixed (byte* buf = bytes) return ReadLine(fd, idle, buf, maxLine);
    }

    private static string? ReadLine(int fd, TimeSpan idle, byte* buf, int maxLine)
    {
        int len = 0;
        long until = idle == Timeout.InfiniteTimeSpan ? long.MaxValue : Environment.TickCount64 + (long)idle.TotalMilliseconds;
        while (len < maxLine)
        {
            long left = until == long.MaxValue ? -1 : until - Environment.TickCount64;
            if (until != long.MaxValue && left <= 0) return null;
            Libc.PollFd p = new() { Fd = fd, Events = Libc.POLLIN };
            int n = Libc.Poll(&p, 1, (int)Math.Min(left, int.MaxValue));
            if (n < 0 && Errno.Last == Errno.EINTR) continue;
            if (n <= 0) return null;
            nint got = Libc.Read(fd, buf + len, (nuint)(maxLine - len));
            if (got < 0 && Errno.Last == Errno.EINTR) continue;
            if (got <= 0) break;
            int end = len;
            len += (int)got;
            for (int i = end; i < len; i++)
                if (buf[i] == (byte)'\n') return Encoding.UTF8.GetString(buf, i);
        }
        return null;
    }

    private static bool WriteLine(int fd, string line)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(line + "\n");
        fixed (byte* b = bytes)
        {
            int done = 0;
            while (done < bytes.Length)
            {
                nint n = Libc.Write(fd, b + done, (nuint)(bytes.Length - done));
                if (n < 0 && Errno.Last == Errno.EINTR) continue;
                if (n <= 0) return false;
                done += (int)n;
            }
        }
        return true;
    }

    /// <summary>
    /// Sends one request line to device <paramref name="id"/>'s server and returns its reply line. No socket, or
    /// nobody listening on it (a killed server's leftover): UsageException. No reply within <paramref name="timeout"/>: UblkAotException.
    /// </summary>
    public static string Request(uint id, string line, TimeSpan timeout, int maxReply = MaxLine)
    {
        string path = PathOf(id);
        if (!Libc.UnixAddress(path, out Libc.SockAddrUn addr)) throw new UsageException("control socket path too long: " + path);
        int fd = Libc.Socket(Libc.AF_UNIX, Libc.SOCK_STREAM | Libc.SOCK_CLOEXEC, 0);
        if (fd < 0) throw new SysException("socket(AF_UNIX)", Errno.Last);
        try
        {
            if (Libc.Connect(fd, &addr, (uint)sizeof(Libc.SockAddrUn)) != 0)
            {
                int e = Errno.Last;
                if (e is Errno.ENOENT or Errno.ECONNREFUSED)
                    throw new UsageException("ublk device " + id + " has no running ublk-aot server to ask (" +
                        (e == Errno.ENOENT ? "no control socket " + path : "nobody listens on " + path) + ")");
                throw new SysException("connect(" + path + ")", e);
            }
            if (!WriteLine(fd, line)) throw new SysException("write(" + path + ")", Errno.Last);
            return ReadLine(fd, timeout, maxReply) ?? throw new SysException("no reply from the server of ublk device " + id + " on " + path, Errno.ETIMEDOUT);
        }
        finally { Libc.Close(fd); }
    }

    /// <summary>Stops the thread (a request in progress finishes first), closes the socket and removes it if it is still ours.</summary>
    public void Dispose() => _listener.Dispose();
}
