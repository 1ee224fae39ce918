using System;
using System.Globalization;
using System.Text;
using Ublk.Aot.Interop;

namespace Ublk.Aot.Backends;

/// <summary>
/// An NBD URI as the NBD project's doc/uri.md defines it (RFC 3986 syntax): <c>nbd://HOST[:PORT]/EXPORT</c> (TCP,
/// port 10809 by default, an IPv6 literal in brackets) or <c>nbd+unix:///EXPORT?socket=PATH</c> (a unix socket; a
/// leading %00 names an abstract one). The export name is the path without its first '/', percent-decoded: an
/// empty path is the server's default export and <c>nbd://h//disk</c> names "/disk". The TLS schemes (nbds,
/// nbds+unix) are refused: ublk-aot has no TLS. Query parameters of our own: <c>reconnect=SECONDS</c> (default 30).
/// Host names other than IP literals and "localhost" are refused: a static binary has no resolver it can trust.
/// </summary>
public sealed record NbdUri(string Text, string? Host, byte[]? Address, int Family, int Port, string? SocketPath, string Export,
    int ReconnectSeconds)
{
    public const int DefaultPort = 10809;
    public const int DefaultReconnectSeconds = 30;
    public const int AF_INET = 2;
    public const int AF_INET6 = 10;

    public bool IsUnix => SocketPath != null;

    /// <summary>Where it connects, for messages: "127.0.0.1:10809" or "unix socket /run/nbd.sock".</summary>
    public string Where => IsUnix ? "unix socket " + SocketPath : (Family == AF_INET6 ? "[" + Host + "]" : Host) + ":" + Port;

    /// <summary>Parses <paramref name="uri"/>; throws <see cref="SpecException"/> naming what is wrong.</summary>
    public static NbdUri Parse(string uri)
    {
        SpecException Bad(string why) => new("nbd: '" + uri + "': " + why + " (expected nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH)");
        int schemeEnd = uri.IndexOf("://", StringComparison.Ordinal);
        if (schemeEnd < 0) throw Bad("not a URI");
        string scheme = uri[..schemeEnd].ToLowerInvariant();
        if (scheme is "nbds" or "nbds+unix") throw Bad("TLS (" + scheme + ") is not supported by ublk-aot");
        if (scheme is not ("nbd" or "nbd+unix")) throw Bad("unknown scheme '" + scheme + "'");
        string rest = uri[(schemeEnd + 3)..];
        int q = rest.IndexOf('?');
        string query = q < 0 ? "" : rest[(q + 1)..];
        if (q >= 0) rest = rest[..q];
        if (rest.Contains('#')) throw Bad("a fragment (#) has no meaning here");
        int slash = rest.IndexOf('/');
        string authority = slash < 0 ? rest : rest[..slash];
        string export = slash < 0 ? "" : Decode(rest[(slash + 1)..]) ?? throw Bad("bad percent-encoding in the export name");
        if (Encoding.UTF8.GetByteCount(export) > 4096) throw Bad("the export name is longer than 4096 bytes");
        if (export.Contains('\0')) throw Bad("the export name contains NUL");

        string? socket = null;
        int reconnect = DefaultReconnectSeconds;
        bool sawReconnect = false;
        foreach (string kv in query.Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = kv.IndexOf('=');
            string key = eq < 0 ? kv : kv[..eq];
            string value = Decode(eq < 0 ? "" : kv[(eq + 1)..]) ?? throw Bad("bad percent-encoding in '" + kv + "'");
            switch (key)
            {
                case "socket" when scheme == "nbd+unix":
                    if (socket != null) throw Bad("socket= given twice");
                    socket = value;
                    break;
                case "reconnect":
                    if (sawReconnect) throw Bad("reconnect= given twice");
                    sawReconnect = true;
                    if (!int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out reconnect) || reconnect > 86400)
                        throw Bad("reconnect= must be whole seconds from 0 to 86400, got '" + value + "'");
                    break;
                default:
                    throw Bad("unknown query parameter '" + key + "'" + (key == "socket" ? " (only nbd+unix takes socket=)" : ""));
            }
        }

        if (scheme == "nbd+unix")
        {
            if (authority.Length > 0) throw Bad("nbd+unix takes no host (three slashes: nbd+unix:///EXPORT?socket=PATH)");
            if (string.IsNullOrEmpty(socket)) throw Bad("nbd+unix needs socket=PATH");
            // sun_path is 108 bytes: a path needs its NUL, an abstract name (leading NUL) does not.
            int max = socket[0] == '\0' ? 108 : 107;
            if (Encoding.UTF8.GetByteCount(socket) > max) throw Bad("the socket path is longer than " + max + " bytes");
            return new NbdUri(uri, null, null, 0, 0, socket, export, reconnect);
        }

        if (authority.Contains('@')) throw Bad("user information (…@) is only for TLS, which ublk-aot does not have");
        if (authority.Length == 0) throw Bad("no host");
        string host, portText = "";
        int family;
        if (authority[0] == '[')
        {
            int close = authority.IndexOf(']');
            if (close < 0) throw Bad("unclosed '[' in the host");
            host = authority[1..close];
            string after = authority[(close + 1)..];
            if (after.Length > 0 && after[0] != ':') throw Bad("junk after ']'");
            if (after.Length > 0) portText = after[1..];
            family = AF_INET6;
        }
        else
        {
            int colon = authority.IndexOf(':');
            host = colon < 0 ? authority : authority[..colon];
            if (colon >= 0) portText = authority[(colon + 1)..];
            if (host == "localhost") host = "127.0.0.1";
            family = AF_INET;
        }
        int port = DefaultPort;
        if (portText.Length > 0 && (!int.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out port) || port < 1 || port > 65535))
            throw Bad("bad port '" + portText + "'");
        byte[]? addr = ParseAddress(host, family);
        if (addr == null)
            throw Bad(family == AF_INET6 ? "'" + host + "' is not an IPv6 address"
                : "'" + host + "' is not an IPv4 address or localhost (host names are not resolved)");
        return new NbdUri(uri, host, addr, family, port, null, export, reconnect);
    }

    /// <summary>Percent-decoding (RFC 3986 §2.1) of UTF-8 octets; null on a bad escape or invalid UTF-8.</summary>
    internal static string? Decode(string s)
    {
        if (s.IndexOf('%') < 0) return s;
        var bytes = new byte[Encoding.UTF8.GetByteCount(s)];
        int n = 0;
        for (int i = 0; i < s.Length; i++)
        {
            if (s[i] == '%')
            {
                if (i + 2 >= s.Length || !byte.TryParse(s.AsSpan(i + 1, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out byte b)) return null;
                bytes[n++] = b;
                i += 2;
            }
            else n += Encoding.UTF8.GetBytes(s.AsSpan(i, 1), bytes.AsSpan(n));
        }
        try { return new UTF8Encoding(false, true).GetString(bytes, 0, n); }
        catch (DecoderFallbackException) { return null; }
    }

    /// <summary>An IPv4 dotted quad or an IPv6 literal in network order (inet_pton(3)); null if it is not one.</summary>
    private static unsafe byte[]? ParseAddress(string host, int family)
    {
        if (host.Length == 0) return null;
        byte[] a = new byte[family == AF_INET ? 4 : 16];
        fixed (byte* p = a) return Libc.InetPton(family, host, p) == 1 ? a : null;
    }
}
