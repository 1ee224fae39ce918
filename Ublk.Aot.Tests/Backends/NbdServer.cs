using System;
using System.Diagnostics;
using System.IO;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Threading;
using Xunit;

namespace Ublk.Aot.Tests.Backends;

/// <summary>
/// A real NBD server for a test: nbdkit or qemu-nbd in the foreground, ready once it listens, killed on Dispose.
/// Debian's packages (scripts/vm-setup.sh installs them on the host, which the VM shares); a missing one fails.
/// </summary>
public sealed class NbdServer : IDisposable
{
    public const string Nbdkit = "/usr/bin/nbdkit";
    public const string QemuNbd = "/usr/bin/qemu-nbd";

    private readonly Process _p;
    private readonly StringBuilder _err = new();

    public string Command { get; }
    public string Stderr { get { lock (_err) return _err.ToString(); } }

    private NbdServer(string file, string args, string? socket, int port)
    {
        Command = Path.GetFileName(file) + " " + args;
        Assert.True(File.Exists(file), "missing " + file + " (scripts/vm-setup.sh installs nbdkit and qemu-utils)");
        // A socket file left by a killed server would make the new one fail to bind.
        if (socket != null) File.Delete(socket);
        var psi = new ProcessStartInfo(file, args) { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        _p = Process.Start(psi)!;
        _p.ErrorDataReceived += (_, a) => { if (a.Data != null) lock (_err) _err.AppendLine(a.Data); };
        _p.OutputDataReceived += (_, a) => { if (a.Data != null) lock (_err) _err.AppendLine(a.Data); };
        _p.BeginErrorReadLine();
        _p.BeginOutputReadLine();
        var sw = Stopwatch.StartNew();
        while (sw.ElapsedMilliseconds < 30_000)
        {
            if (_p.HasExited) { _p.WaitForExit(); Assert.Fail(Command + " exited " + _p.ExitCode + ": " + Stderr); }
            if (socket != null && File.Exists(socket)) return;
            if (port > 0 && CanConnect(port)) return;
            Thread.Sleep(50);
        }
        Kill();
        Assert.Fail(Command + " did not listen within 30 s: " + Stderr);
    }

    /// <summary>nbdkit -f ARGS, listening on <paramref name="socket"/> (give -U in ARGS) or 127.0.0.1:<paramref name="port"/> (give -p).</summary>
    public static NbdServer StartNbdkit(string args, string? socket = null, int port = 0) => new(Nbdkit, "-f " + args, socket, port);

    /// <summary>qemu-nbd ARGS (persistent, -t), on a socket (-k) or a port (-p).</summary>
    public static NbdServer StartQemuNbd(string args, string? socket = null, int port = 0) => new(QemuNbd, args, socket, port);

    public int Pid => _p.Id;

    /// <summary>SIGKILL, as a crashed server: no goodbye on its connections.</summary>
    public void Kill()
    {
        if (!_p.HasExited) _p.Kill();
        _p.WaitForExit(10_000);
    }

    public static bool CanConnect(int port)
    {
        try { using var c = new TcpClient(); c.Connect(IPAddress.Loopback, port); return true; }
        catch (SocketException) { return false; }
    }

    public static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int p = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return p;
    }

    private bool _disposed;

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        Kill();
        _p.Dispose();
    }
}
