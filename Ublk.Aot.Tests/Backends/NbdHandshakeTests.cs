using System;
using System.Diagnostics;
using System.IO;
using System.Net;
using System.Net.Sockets;
using System.Threading;
using Ublk.Aot.Backends;
using Xunit;

namespace Ublk.Aot.Tests.Backends;

/// <summary>NBD URIs (doc/uri.md): what is accepted and what each refusal says.</summary>
public sealed class NbdUriTests
{
    [Theory]
    [InlineData("nbd://127.0.0.1/disk", "127.0.0.1:10809", "disk")]
    [InlineData("nbd://127.0.0.1:10810/", "127.0.0.1:10810", "")]
    [InlineData("nbd://127.0.0.1", "127.0.0.1:10809", "")]
    [InlineData("nbd://localhost//disk", "127.0.0.1:10809", "/disk")]
    [InlineData("nbd://127.0.0.1/hello%20world", "127.0.0.1:10809", "hello world")]
    [InlineData("nbd://[::1]:10811/x", "[::1]:10811", "x")]
    [InlineData("nbd+unix:///disk?socket=/run/nbd.sock", "unix socket /run/nbd.sock", "disk")]
    [InlineData("nbd+unix:///?socket=%00abstract", "unix socket \0abstract", "")]
    [InlineData("NBD://127.0.0.1/x?reconnect=5", "127.0.0.1:10809", "x")]
    public void Accepted(string uri, string where, string export)
    {
        NbdUri u = NbdUri.Parse(uri);
        Assert.Equal(where, u.Where);
        Assert.Equal(export, u.Export);
    }

    [Fact]
    public void Reconnect_defaults_to_30_seconds_and_can_be_set()
    {
        Assert.Equal(30, NbdUri.Parse("nbd://127.0.0.1/x").ReconnectSeconds);
        Assert.Equal(0, NbdUri.Parse("nbd://127.0.0.1/x?reconnect=0").ReconnectSeconds);
        Assert.Equal(5, NbdUri.Parse("nbd+unix:///x?socket=/s&reconnect=5").ReconnectSeconds);
    }

    [Theory]
    [InlineData("nbd:127.0.0.1", "not a URI")]
    [InlineData("nbds://127.0.0.1/x", "TLS (nbds) is not supported")]
    [InlineData("nbds+unix:///x?socket=/s", "TLS (nbds+unix) is not supported")]
    [InlineData("http://127.0.0.1/x", "unknown scheme 'http'")]
    [InlineData("nbd:///x", "no host")]
    [InlineData("nbd://example.com/x", "'example.com' is not an IPv4 address or localhost (host names are not resolved)")]
    [InlineData("nbd://1/x", "'1' is not an IPv4 address")]
    [InlineData("nbd://127.0.0.1:0/x", "bad port '0'")]
    [InlineData("nbd://127.0.0.1:65536/x", "bad port '65536'")]
    [InlineData("nbd://127.0.0.1:http/x", "bad port 'http'")]
    [InlineData("nbd://[::1/x", "unclosed '['")]
    [InlineData("nbd://[127.0.0.1]/x", "'127.0.0.1' is not an IPv6 address")]
    [InlineData("nbd://user@127.0.0.1/x", "user information")]
    [InlineData("nbd://127.0.0.1/x?socket=/s", "only nbd+unix takes socket=")]
    [InlineData("nbd://127.0.0.1/x?tls=on", "unknown query parameter 'tls'")]
    [InlineData("nbd://127.0.0.1/x?reconnect=-1", "reconnect= must be whole seconds")]
    [InlineData("nbd://127.0.0.1/x?reconnect=5&reconnect=6", "reconnect= given twice")]
    [InlineData("nbd://127.0.0.1/%zz", "bad percent-encoding")]
    [InlineData("nbd://127.0.0.1/%00x", "contains NUL")]
    [InlineData("nbd://127.0.0.1/x#frag", "a fragment")]
    [InlineData("nbd+unix:///x", "nbd+unix needs socket=PATH")]
    [InlineData("nbd+unix://host/x?socket=/s", "nbd+unix takes no host")]
    public void Refused(string uri, string message)
    {
        var e = Assert.Throws<SpecException>(() => NbdUri.Parse(uri));
        Assert.Contains(message, e.Message);
        Assert.StartsWith("nbd: '" + uri + "': ", e.Message);
    }
}

/// <summary>
/// The handshake against a real NBD server: nbdkit (Debian's package; scripts/vm-setup.sh installs it on the
/// host). No kernel nbd is needed for the handshake, so these run on the host. A missing nbdkit fails them.
/// </summary>
public sealed class NbdHandshakeTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("ublk-aot-nbd-").FullName;
    private NbdServer? _server;
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    private string Sock => Path.Combine(_dir, "nbd.sock");

    private void StartNbdkit(string args, string? waitForSocket, int port = 0) => _server = NbdServer.StartNbdkit(args, waitForSocket, port);

    private static int FreePort() => NbdServer.FreePort();

    [Fact]
    public void Probe_over_a_unix_socket_learns_size_flags_and_block_sizes()
    {
        StartNbdkit("-U " + Sock + " memory 64M", Sock);
        NbdExport e = NbdHandshake.Probe(NbdUri.Parse("nbd+unix:///?socket=" + Sock), Timeout);
        Assert.Equal(64UL << 20, e.Size);
        Assert.False(e.ReadOnly);
        Assert.True(e.Flush && e.Trim && e.WriteZeroes, "nbdkit memory offers flush, trim and write zeroes: flags 0x" + e.Flags.ToString("x"));
        Assert.True(e.Structured, "nbdkit 1.32 offers structured replies");
        Assert.True(e.MinBlock >= 1 && e.PreferredBlock >= e.MinBlock && e.MaxPayload >= e.PreferredBlock, e.ToString());
    }

    [Fact]
    public void Go_over_tcp_enters_transmission_and_a_read_only_export_says_so()
    {
        int port = FreePort();
        StartNbdkit("-r -i 127.0.0.1 -p " + port + " memory 16M", null, port);
        int fd = NbdHandshake.Go(NbdUri.Parse("nbd://127.0.0.1:" + port + "/"), Timeout, out NbdExport e);
        try
        {
            Assert.True(fd >= 0);
            Assert.Equal(16UL << 20, e.Size);
            Assert.True(e.ReadOnly, "nbdkit -r: flags 0x" + e.Flags.ToString("x"));
        }
        finally { global::Ublk.Aot.Interop.Libc.Close(fd); }
    }

    [Fact]
    public void An_unknown_export_is_named_in_one_line()
    {
        StartNbdkit("-U " + Sock + " --filter=exportname memory 16M exportname=good exportname-strict=true", Sock);
        Assert.Equal(16UL << 20, NbdHandshake.Probe(NbdUri.Parse("nbd+unix:///good?socket=" + Sock), Timeout).Size);
        var ex = Assert.Throws<SpecException>(() => NbdHandshake.Probe(NbdUri.Parse("nbd+unix:///nosuch?socket=" + Sock), Timeout));
        Assert.StartsWith("nbd: unix socket " + Sock + " export 'nosuch': no such export (NBD_REP_ERR_UNKNOWN)", ex.Message);
        Assert.DoesNotContain('\n', ex.Message);
    }

    [Fact]
    public void A_refused_connection_and_a_missing_socket_are_one_line_each()
    {
        int port = FreePort();
        var tcp = Assert.Throws<SpecException>(() => NbdHandshake.Probe(NbdUri.Parse("nbd://127.0.0.1:" + port + "/x"), Timeout));
        Assert.Equal("nbd: cannot connect to 127.0.0.1:" + port + ": ECONNREFUSED", tcp.Message);
        var unix = Assert.Throws<SpecException>(() => NbdHandshake.Probe(NbdUri.Parse("nbd+unix:///x?socket=" + Sock), Timeout));
        Assert.Equal("nbd: cannot connect to unix socket " + Sock + ": ENOENT", unix.Message);
    }

    [Theory]
    [InlineData("", "closed the connection during the handshake, waiting for the greeting")]
    [InlineData("HTTP/1.1 400 Bad Request\r\n\r\n", "is not an NBD server (no NBDMAGIC greeting)")]
    public void A_server_that_is_not_nbd_or_hangs_up_is_one_line(string send, string message)
    {
        // A real socket that answers with something else and closes: the handshake must not hang or crash.
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        var t = new Thread(() =>
        {
            using TcpClient c = l.AcceptTcpClient();
            byte[] b = System.Text.Encoding.ASCII.GetBytes(send);
            c.GetStream().Write(b);
        });
        t.Start();
        try
        {
            var ex = Assert.Throws<SpecException>(() => NbdHandshake.Probe(NbdUri.Parse("nbd://127.0.0.1:" + port + "/"), Timeout));
            Assert.Equal("nbd: the server at 127.0.0.1:" + port + " " + message, ex.Message);
        }
        finally { t.Join(10_000); l.Stop(); }
    }

    [Fact]
    public void The_spec_probes_the_export_and_its_caps_follow_the_flags()
    {
        StartNbdkit("-U " + Sock + " memory 64M", Sock);
        using (BackendSpec spec = BackendTable.Parse("nbd+unix:///?socket=" + Sock, new SpecContext(false)))
        {
            var nbd = Assert.IsType<NbdSpec>(spec);
            global::Ublk.Aot.Ublk.BackendCaps c = nbd.Caps;
            Assert.Equal(64UL << 20, c.Size);
            Assert.True(c.VolatileCache && c.Discard && c.WriteZeroes && !c.ReadOnly, "flags 0x" + nbd.Export.Flags.ToString("x"));
            Assert.Equal(nbd.Export.MultiConn ? 0 : 1, c.MaxQueues);
            Assert.Equal("nbd unix socket " + Sock + " (default export)", spec.Describe());
        }
        _server!.Dispose();
        // A read-only export without trim (nbdkit's eval plugin with only get_size and pread): a read-only device, no discard.
        StartNbdkit("-U " + Sock + " eval get_size=\"echo 1048576\" pread=\"dd if=/dev/zero count=$3 iflag=count_bytes status=none\"", Sock);
        using (BackendSpec spec = BackendTable.Parse("nbd+unix:///?socket=" + Sock, new SpecContext(false)))
        {
            global::Ublk.Aot.Ublk.BackendCaps c = Assert.IsType<NbdSpec>(spec).Caps;
            Assert.True(c.ReadOnly && !c.Discard && !c.WriteZeroes, "flags 0x" + ((NbdSpec)spec).Export.Flags.ToString("x"));
        }
    }

    [Theory]
    [InlineData("nbds://127.0.0.1/x", "TLS (nbds) is not supported")]
    [InlineData("nbds+unix:///x?socket=/s", "TLS (nbds+unix) is not supported")]
    [InlineData("nbd+unix:///x", "socket=")]
    public void The_backend_table_hands_every_nbd_scheme_to_the_uri_parser(string uri, string message)
    {
        var ex = Assert.Throws<SpecException>(() => BackendTable.Parse(uri, new SpecContext(false)));
        Assert.Contains(message, ex.Message);
        Assert.StartsWith("nbd: '" + uri + "'", ex.Message);
    }

    public void Dispose()
    {
        _server?.Dispose();
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }
}
