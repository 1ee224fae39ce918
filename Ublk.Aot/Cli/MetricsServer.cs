using System;
using System.Globalization;
using System.IO;
using System.Text;
using Ublk.Aot.Interop;

namespace Ublk.Aot.Cli;

/// <summary>Where `serve --metrics` listens: unix:PATH, or an IP literal and a port (127.0.0.1:9101, [::1]:9101).</summary>
public readonly record struct MetricsEndpoint(string? UnixPath, int Family, byte[] Address, int Port, string Text)
{
    public const string Syntax = "unix:PATH or IP:PORT (e.g. 127.0.0.1:9101, [::1]:9101; port 1-65535)";

    /// <summary>Parses an --metrics value; null (and <paramref name="error"/>) when it is not one.</summary>
    public static MetricsEndpoint? TryParse(string v, out string? error)
    {
        error = null;
        string Bad(string why) => "--metrics must be " + Syntax + ", got '" + v + "'" + (why.Length > 0 ? ": " + why : "");
        if (v.StartsWith("unix:", StringComparison.Ordinal))
        {
            string path = v["unix:".Length..];
            if (path.Length == 0) { error = Bad("no path"); return null; }
            if (!Libc.UnixAddress(path, out _)) { error = Bad("the path is longer than 107 bytes"); return null; }
            return new MetricsEndpoint(path, Libc.AF_UNIX, [], 0, v);
        }
        string host, port;
        int family;
        if (v.StartsWith('['))
        {
            int close = v.IndexOf("]:", StringComparison.Ordinal);
            if (close < 0) { error = Bad(""); return null; }
            host = v[1..close];
            port = v[(close + 2)..];
            family = Libc.AF_INET6;
        }
        else
        {
            int colon = v.LastIndexOf(':');
            if (colon < 0 || v.IndexOf(':') != colon) { error = Bad(v.IndexOf(':') != colon ? "an IPv6 address goes in brackets" : ""); return null; }
            host = v[..colon];
            port = v[(colon + 1)..];
            family = Libc.AF_INET;
        }
        if (!int.TryParse(port, NumberStyles.None, CultureInfo.InvariantCulture, out int p) || p < 1 || p > 65535)
        {
            error = Bad(port == "0" ? "port 0 (any free port) is refused: a scraper must know where to look" : "bad port");
            return null;
        }
        byte[] addr = new byte[family == Libc.AF_INET ? 4 : 16];
        if (!InetPton(family, host, addr)) { error = Bad("'" + host + "' is not an " + (family == Libc.AF_INET ? "IPv4" : "IPv6") + " address"); return null; }
        return new MetricsEndpoint(null, family, addr, p, v);
    }

    private static unsafe bool InetPton(int family, string host, byte[] addr)
    {
        if (host.Length == 0) return false;
        fixed (byte* a = addr) return Libc.InetPton(family, host, a) == 1;
    }
}

/// <summary>
/// `serve --metrics`: one background thread (never a queue thread) answering HTTP/1.1 `GET /metrics` with the
/// Prometheus text exposition of the device's counters, on a TCP port or a unix stream socket (the same HTTP on
/// both). One connection at a time, one request per connection (the reply says `Connection: close`, RFC 9112 §9.6,
/// and the socket is closed after it); other paths get 404, other methods 405 with `Allow` (RFC 9110 §15.5.6), a
/// request that is not HTTP/1.x 400. Bound before the device is created, so an address in use leaves nothing
/// behind; connections wait in the backlog until <see cref="Start"/>.
/// </summary>
public sealed unsafe class MetricsServer : IDisposable
{
    private const int MaxHead = 8192;
    private static readonly TimeSpan ClientIdle = TimeSpan.FromSeconds(5);

    private readonly MetricsEndpoint _ep;
    private readonly SocketListener _listener;
    private Func<string>? _body;

    public MetricsEndpoint Endpoint => _ep;

    private MetricsServer(MetricsEndpoint ep, SocketListener listener)
    {
        _ep = ep;
        _listener = listener;
    }

    /// <summary>Binds and listens. An address in use, a path that is not a socket, no permission: UsageException (one line).</summary>
    public static MetricsServer Bind(MetricsEndpoint ep)
    {
        int fd = Libc.Socket(ep.Family, Libc.SOCK_STREAM | Libc.SOCK_CLOEXEC, 0);
        if (fd < 0) throw new SysException("socket(--metrics " + ep.Text + ")", Errno.Last);
        bool boundPath = false;
        try
        {
            if (ep.UnixPath is { } path)
            {
                Libc.StatBuf st;
                if (Libc.LStat(path, &st) == 0)
                {
                    if ((st.st_mode & Libc.S_IFMT) != Libc.S_IFSOCK) throw new UsageException("serve: --metrics " + ep.Text + ": " + path + " exists and is not a socket");
                    if (SomeoneListens(path)) throw new UsageException("serve: --metrics " + ep.Text + ": another process listens on " + path);
                    File.Delete(path); // a dead server's leftover
                }
                Libc.UnixAddress(path, out Libc.SockAddrUn un);
                if (Libc.Bind(fd, &un, (uint)sizeof(Libc.SockAddrUn)) != 0) throw BindError(ep, Errno.Last);
                boundPath = true;
            }
            else
            {
                // A restarted server may rebind while the old connections sit in TIME_WAIT; Linux still refuses a
                // second listener on the same address with EADDRINUSE.
                int one = 1;
                Libc.SetSockOpt(fd, Libc.SOL_SOCKET, Libc.SO_REUSEADDR, &one, 4);
                ushort portBE = (ushort)((ep.Port >> 8) | ((ep.Port & 0xff) << 8));
                int rc;
                if (ep.Family == Libc.AF_INET)
                {
                    Libc.SockAddrIn a = default;
                    a.Family = Libc.AF_INET;
                    a.PortBE = portBE;
                    for (int i = 0; i < 4; i++) a.Addr[i] = ep.Address[i];
                    rc = Libc.BindAddr(fd, &a, (uint)sizeof(Libc.SockAddrIn));
                }
                else
                {
                    Libc.SetSockOpt(fd, Libc.IPPROTO_IPV6, Libc.IPV6_V6ONLY, &one, 4);
                    Libc.SockAddrIn6 a = default;
                    a.Family = Libc.AF_INET6;
                    a.PortBE = portBE;
                    for (int i = 0; i < 16; i++) a.Addr[i] = ep.Address[i];
                    rc = Libc.BindAddr(fd, &a, (uint)sizeof(Libc.SockAddrIn6));
                }
                if (rc != 0) throw BindError(ep, Errno.Last);
            }
            return new MetricsServer(ep, SocketListener.Listen(fd, 16, ep.UnixPath, "--metrics " + ep.Text));
        }
        catch
        {
            Libc.Close(fd);
            if (boundPath) { try { File.Delete(ep.UnixPath!); } catch (IOException) { } }
            throw;
        }
    }

    private static UblkAotException BindError(MetricsEndpoint ep, int errno) => errno switch
    {
        Errno.EADDRINUSE => new UsageException("serve: --metrics " + ep.Text + ": address already in use"),
        Errno.EADDRNOTAVAIL => new UsageException("serve: --metrics " + ep.Text + ": no such local address"),
        Errno.EACCES or Errno.EPERM => new UsageException("serve: --metrics " + ep.Text + ": permission denied"),
        Errno.ENOENT => new UsageException("serve: --metrics " + ep.Text + ": no such directory"),
        _ => new SysException("bind(--metrics " + ep.Text + ")", errno),
    };

    private static bool SomeoneListens(string path)
    {
        int fd = Libc.Socket(Libc.AF_UNIX, Libc.SOCK_STREAM | Libc.SOCK_CLOEXEC, 0);
        if (fd < 0) return false;
        try
        {
            Libc.UnixAddress(path, out Libc.SockAddrUn un);
            return Libc.Connect(fd, &un, (uint)sizeof(Libc.SockAddrUn)) == 0;
        }
        finally { Libc.Close(fd); }
    }

    /// <summary>Starts answering on a background thread; <paramref name="body"/> renders the exposition per request.</summary>
    public void Start(Func<string> body)
    {
        _body = body;
        _listener.Start("ublk-metrics", Serve);
    }

    private void Serve(int c)
    {
        try
        {
            string? head = ReadHead(c);
            if (head == null) return; // closed, idle or oversized: nothing worth an answer
            Response r = Answer(head, _body!);
            WriteAll(c, r.Bytes);
        }
        catch (Exception e) when (e is UblkAotException or IOException or InvalidOperationException)
        {
            Console.Error.WriteLine("ublk-aot: --metrics: " + e.Message);
        }
    }

    /// <summary>An HTTP/1.1 response, whole (head and body).</summary>
    public readonly record struct Response(int Status, byte[] Bytes);

    /// <summary>
    /// The answer to one request head (request line and header fields, without the body). RFC 9112 §3: request-line =
    /// method SP request-target SP HTTP-version; the target of `GET /metrics` may carry a query, which is ignored.
    /// HEAD gets the same head as GET without the body (RFC 9110 §9.3.2).
    /// </summary>
    public static Response Answer(string head, Func<string> body)
    {
        int eol = head.IndexOf('\n');
        string line = (eol < 0 ? head : head[..eol]).TrimEnd('\r');
        string[] parts = line.Split(' ');
        if (parts.Length != 3 || !parts[2].StartsWith("HTTP/1.", StringComparison.Ordinal) || parts[1].Length == 0)
            return Reply(400, "Bad Request", "text/plain; charset=utf-8", "bad request\n", true, null);
        string method = parts[0];
        string target = parts[1];
        int query = target.IndexOf('?');
        string path = query < 0 ? target : target[..query];
        bool headOnly = method == "HEAD";
        if (method != "GET" && !headOnly)
            return Reply(405, "Method Not Allowed", "text/plain; charset=utf-8", "only GET and HEAD\n", true, "GET, HEAD");
        if (path != "/metrics")
            return Reply(404, "Not Found", "text/plain; charset=utf-8", "not found: the metrics are at /metrics\n", !headOnly, null);
        return Reply(200, "OK", StatsReport.PrometheusContentType, body(), !headOnly, null);
    }

    private static Response Reply(int status, string reason, string type, string text, bool withBody, string? allow)
    {
        byte[] content = Encoding.UTF8.GetBytes(text);
        var h = new StringBuilder(256);
        h.Append("HTTP/1.1 ").Append(status.ToString(CultureInfo.InvariantCulture)).Append(' ').Append(reason).Append("\r\n");
        h.Append("Content-Type: ").Append(type).Append("\r\n");
        h.Append("Content-Length: ").Append(content.Length.ToString(CultureInfo.InvariantCulture)).Append("\r\n");
        if (allow != null) h.Append("Allow: ").Append(allow).Append("\r\n");
        h.Append("Connection: close\r\n\r\n");
        byte[] head = Encoding.ASCII.GetBytes(h.ToString());
        if (!withBody) return new Response(status, head);
        byte[] all = new byte[head.Length + content.Length];
        head.CopyTo(all, 0);
        content.CopyTo(all, head.Length);
        return new Response(status, all);
    }

    /// <summary>The request head up to the empty line (CRLF CRLF, or a bare LF LF, RFC 9112 §2.2), or null.</summary>
    private static string? ReadHead(int fd)
    {
        byte[] buf = new byte[MaxHead];
        int len = 0;
        long until = Environment.TickCount64 + (long)ClientIdle.TotalMilliseconds;
        fixed (byte* b = buf)
        {
            while (len < MaxHead)
            {
                long left = until - Environment.TickCount64;
                if (left <= 0) return null;
                Libc.PollFd p = new() { Fd = fd, Events = Libc.POLLIN };
                int n = Libc.Poll(&p, 1, (int)left);
                if (n < 0 && Errno.Last == Errno.EINTR) continue;
                if (n <= 0) return null;
                nint got = Libc.Read(fd, b + len, (nuint)(MaxHead - len));
                if (got < 0 && Errno.Last == Errno.EINTR) continue;
                if (got <= 0) return null;
                int from = Math.Max(0, len - 3);
                len += (int)got;
                for (int i = from; i < len; i++)
                {
                    if (b[i] != '\n') continue;
                    if ((i >= 1 && b[i - 1] == '\n') || (i >= 2 && b[i - 1] == '\r' && b[i - 2] == '\n'))
                        return Encoding.ASCII.GetString(b, i + 1);
                }
            }
        }
        return null;
    }

    private static void WriteAll(int fd, byte[] bytes)
    {
        fixed (byte* b = bytes)
        {
            int done = 0;
            while (done < bytes.Length)
            {
                // MSG_NOSIGNAL: a client that hung up must not kill the server with SIGPIPE.
                nint n = Libc.Send(fd, b + done, (nuint)(bytes.Length - done), Libc.MSG_NOSIGNAL);
                if (n < 0 && Errno.Last == Errno.EINTR) continue;
                if (n <= 0) return;
                done += (int)n;
            }
        }
    }

    /// <summary>Stops the thread (a request in progress finishes first), closes the socket, removes a unix path that is still ours.</summary>
    public void Dispose() => _listener.Dispose();
}
