using System;
using System.IO;
using System.Net.Sockets;
using System.Text;
using Ublk.Aot.Cli;
using Xunit;

namespace Ublk.Aot.Tests.Cli;

/// <summary>The sd_notify client against real AF_UNIX datagram sockets: a filesystem path and an abstract name.</summary>
public sealed class SdNotifyTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("ublk-aot-notify-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static Socket Listen(string address)
    {
        var s = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        s.Bind(new UnixDomainSocketEndPoint(address));
        s.ReceiveTimeout = 5000;
        return s;
    }

    private static string Receive(Socket s)
    {
        var buf = new byte[4096];
        int n = s.Receive(buf);
        return Encoding.UTF8.GetString(buf, 0, n);
    }

    [Fact]
    public void A_path_socket_gets_one_datagram_per_notification()
    {
        string path = Path.Combine(_dir, "notify");
        using Socket s = Listen(path);
        Assert.Equal(0, SdNotify.Send(path, "READY=1\nSTATUS=serving /dev/ublkb3"));
        Assert.Equal(0, SdNotify.Send(path, "STOPPING=1"));
        Assert.Equal("READY=1\nSTATUS=serving /dev/ublkb3", Receive(s));
        Assert.Equal("STOPPING=1", Receive(s));
    }

    [Fact]
    public void An_abstract_name_is_addressed_by_its_exact_length()
    {
        string name = "ublk-aot-test-" + Environment.ProcessId + "-" + Guid.NewGuid().ToString("N")[..8];
        // .NET binds an abstract name when the path starts with NUL; its address length is exactly the name's.
        using Socket s = Listen("\0" + name);
        Assert.Equal(0, SdNotify.Send("@" + name, "READY=1"));
        Assert.Equal("READY=1", Receive(s));
        // A longer or shorter name is another socket: nobody listens there.
        Assert.True(SdNotify.Send("@" + name + "x", "READY=1") < 0);
        Assert.True(SdNotify.Send("@" + name[..^1], "READY=1") < 0);
    }

    [Fact]
    public void Notify_follows_NOTIFY_SOCKET_and_does_nothing_without_it()
    {
        string path = Path.Combine(_dir, "env-notify");
        using Socket s = Listen(path);
        string? before = Environment.GetEnvironmentVariable(SdNotify.Variable);
        try
        {
            Environment.SetEnvironmentVariable(SdNotify.Variable, path);
            Assert.True(SdNotify.Notify("STATUS=hello"));
            Assert.Equal("STATUS=hello", Receive(s));
            Environment.SetEnvironmentVariable(SdNotify.Variable, null);
            Assert.False(SdNotify.Notify("STATUS=nobody"));
            s.ReceiveTimeout = 200;
            Assert.Throws<SocketException>(() => Receive(s));
        }
        finally { Environment.SetEnvironmentVariable(SdNotify.Variable, before); }
    }

    [Theory]
    [InlineData("relative/notify")]
    [InlineData("vsock:2:1234")]
    [InlineData("@")]
    [InlineData("")]
    public void An_address_that_is_not_a_unix_socket_is_refused(string address)
    {
        Assert.Equal(-22, SdNotify.Send(address, "READY=1"));
    }

    [Fact]
    public void A_socket_nobody_listens_on_is_an_error_not_an_exception()
    {
        Assert.True(SdNotify.Send(Path.Combine(_dir, "nobody"), "READY=1") < 0);
        Assert.Equal(-22, SdNotify.Send("/" + new string('x', 107), "READY=1"));
    }
}
