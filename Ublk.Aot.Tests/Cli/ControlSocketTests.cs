using System;
using System.IO;
using System.Net.Sockets;
using System.Threading;
using Ublk.Aot.Backends;
using Ublk.Aot.Cli;
using Xunit;

namespace Ublk.Aot.Tests.Cli;

/// <summary>The server's control socket (host side: no device needed) and the backends' part of a resize.</summary>
[Collection(StateDirCollection.Name)]
public sealed class ControlSocketTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "ublk-sock-" + Guid.NewGuid().ToString("N")[..8]);

    public ControlSocketTests() => Environment.SetEnvironmentVariable("UBLK_AOT_STATE_DIR", _dir);

    public void Dispose()
    {
        Environment.SetEnvironmentVariable("UBLK_AOT_STATE_DIR", null);
        if (Directory.Exists(_dir)) Directory.Delete(_dir, true);
    }

    private static unsafe void BindAndClose(string path)
    {
        int fd = global::Ublk.Aot.Interop.Libc.Socket(1, 1, 0);
        Assert.True(fd >= 0);
        Assert.True(global::Ublk.Aot.Interop.Libc.UnixAddress(path, out var addr));
        Assert.Equal(0, global::Ublk.Aot.Interop.Libc.Bind(fd, &addr, 110));
        global::Ublk.Aot.Interop.Libc.Close(fd);
    }

    private static string IntegrationStat(string path) => Integration.IntegrationEnv.Sh("stat -c %a " + path).Out.Trim();

    [Fact]
    public void Request_word_then_reply_line_0600_and_removed_at_exit()
    {
        string path = ControlSocket.PathOf(7);
        Assert.Equal(Path.Combine(_dir, "7.sock"), path);
        using (ControlSocket s = ControlSocket.Bind(7))
        {
            Assert.Equal("600", IntegrationStat(path));
            s.Start(("echo", a => "ok " + a), ("fail", _ => throw new UsageException("no such thing")), ("boom", _ => throw new IOException("disk on fire")));
            Assert.Equal("ok 12345", ControlSocket.Request(7, "echo 12345", TimeSpan.FromSeconds(10)));
            Assert.Equal("ok", ControlSocket.Request(7, "echo", TimeSpan.FromSeconds(10)).TrimEnd());
            Assert.Equal("refused no such thing", ControlSocket.Request(7, "fail", TimeSpan.FromSeconds(10)));
            Assert.Equal("error disk on fire", ControlSocket.Request(7, "boom", TimeSpan.FromSeconds(10)));
            Assert.Equal("refused unknown request 'stats' (echo, fail, boom)", ControlSocket.Request(7, "stats", TimeSpan.FromSeconds(10)));
            // A client that connects and says nothing does not block the next one for long.
            using (var idle = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
            {
                idle.Connect(new UnixDomainSocketEndPoint(path));
                Assert.Equal("ok again", ControlSocket.Request(7, "echo again", TimeSpan.FromSeconds(30)));
            }
        }
        Assert.False(File.Exists(path), "the socket outlived its server");
        var e = Assert.Throws<UsageException>(() => ControlSocket.Request(7, "echo x", TimeSpan.FromSeconds(5)));
        Assert.Contains("ublk device 7 has no running ublk-aot server to ask (no control socket " + path + ")", e.Message);
    }

    [Fact]
    public void A_stale_socket_is_replaced_and_a_departing_server_leaves_its_successor_alone()
    {
        string path = ControlSocket.PathOf(3);
        ControlSocket old = ControlSocket.Bind(3);
        old.Start(("who", _ => "ok old"));
        // The stale one (a killed server's leftover, here one still open) is replaced by the next server's.
        using ControlSocket next = ControlSocket.Bind(3);
        next.Start(("who", _ => "ok next"));
        Assert.Equal("ok next", ControlSocket.Request(3, "who", TimeSpan.FromSeconds(10)));
        old.Dispose();
        Assert.True(File.Exists(path), "the old server removed its successor's socket");
        Assert.Equal("ok next", ControlSocket.Request(3, "who", TimeSpan.FromSeconds(10)));

        // Nobody listening on a socket file: the same clear refusal.
        next.Dispose();
        BindAndClose(path); // what a SIGKILLed server leaves: the file, nobody listening
        Assert.True(File.Exists(path));
        var e = Assert.Throws<UsageException>(() => ControlSocket.Request(3, "who", TimeSpan.FromSeconds(5)));
        Assert.Contains("nobody listens on " + path, e.Message);
        using ControlSocket again = ControlSocket.Bind(3);
        again.Start(("who", _ => "ok again"));
        Assert.Equal("ok again", ControlSocket.Request(3, "who", TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public void A_file_grows_and_shrinks_only_over_empty_space_and_its_spec_follows()
    {
        Directory.CreateDirectory(_dir);
        string img = Path.Combine(_dir, "f.img");
        const ulong M = 1 << 20;
        using BackendSpec spec = BackendTable.Parse("file:" + img + ",size=4M", new SpecContext(false));
        var file = ((FileSpec)spec).File;
        Assert.Null(spec.CheckResize(8 * M));
        Action undo = spec.GrowTo(8 * M);
        Assert.Equal(8 * M, file.Size);
        Assert.Equal((long)(8 * M), new FileInfo(img).Length);
        undo();
        Assert.Equal(4 * M, file.Size);
        Assert.Equal((long)(4 * M), new FileInfo(img).Length);
        spec.GrowTo(8 * M);
        using (var f = new FileStream(img, FileMode.Open, FileAccess.Write, FileShare.ReadWrite)) { f.Position = (long)(6 * M); f.Write(new byte[] { 1, 2, 3 }); }
        string? why = spec.CheckResize(4 * M);
        Assert.NotNull(why);
        Assert.Contains("holds data at offset", why);
        Assert.Contains("beyond the new size " + 4 * M, why);
        Assert.Null(spec.CheckResize(7 * M)); // the data at 6M stays inside
        spec.ShrinkTo(7 * M);
        Assert.Equal(7 * M, file.Size);
        Assert.Equal((long)(7 * M), new FileInfo(img).Length);
        Assert.Equal("file:" + img + ",size=" + 7 * M + ",direct=off", spec.Respec("file:" + img + ",size=4M,direct=off", 7 * M));
        Assert.Equal("file:" + img, spec.Respec("file:" + img, 7 * M));

        using BackendSpec mem = BackendTable.Parse("mem:4M", new SpecContext(false));
        Assert.Contains("backend mem: cannot be resized", mem.CheckResize(8 * M));
        using BackendSpec nul = BackendTable.Parse("null:4M", new SpecContext(false));
        Assert.Null(nul.CheckResize(8 * M));
        Assert.Equal("null:" + 8 * M, nul.Respec("null:4M", 8 * M));
        using BackendSpec fault = BackendTable.Parse("fault:rate=0.5,seed=3:null:4M", new SpecContext(false));
        Assert.Null(fault.CheckResize(8 * M));
        Assert.Equal("fault:rate=0.5,seed=3:null:" + 8 * M, fault.Respec("fault:rate=0.5,seed=3:null:4M", 8 * M));
        using BackendSpec faultMem = BackendTable.Parse("fault:rate=0.5:mem:4M", new SpecContext(false));
        Assert.Contains("backend mem: cannot be resized", faultMem.CheckResize(8 * M));
    }
}
