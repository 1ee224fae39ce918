using System;
using System.Diagnostics;
using System.IO;
using System.Text;
using System.Threading;
using Xunit;

namespace Ublk.Aot.Tests.Integration;

/// <summary>
/// `ublk-aot serve …` as a user runs it: started as a child process, live once it prints /dev/ublkbN,
/// stopped with a signal. Dispose makes sure neither the process nor its device outlives the test.
/// </summary>
public sealed class ServerProcess : IDisposable
{
    private readonly Process _p;
    private readonly StringBuilder _err = new();
    private readonly StringBuilder _out = new();
    private readonly ManualResetEventSlim _firstLine = new(false);
    private string? _device;

    public string Args { get; }
    public string DevicePath => _device ?? throw new InvalidOperationException("server not live");
    public int Id => int.Parse(DevicePath.AsSpan("/dev/ublkb".Length));
    public int Pid => _p.Id;
    public string Stderr { get { lock (_err) return _err.ToString(); } }
    public string Stdout { get { lock (_out) return _out.ToString(); } }
    
    private ServerProcess(string args, (string Name, string Value)[]? env = null)
    {
        Args = args;
        var psi = new ProcessStartInfo(IntegrationEnv.Binary, args)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach ((string name, string value) in env ?? []) psi.Environment[name] = value;
        _p = Process.Start(psi)!;
        _p.OutputDataReceived += (_, a) =>
        {
            if (a.Data == null) { _firstLine.Set(); return; }
            lock (_out) _out.AppendLine(a.Data);
            if (_device == null && a.Data.StartsWith("/dev/ublkb", StringComparison.Ordinal)) _device = a.Data.Trim();
            _firstLine.Set();
        };
        _p.ErrorDataReceived += (_, a) => { if (a.Data != null) lock (_err) _err.AppendLine(a.Data); };
        _p.BeginOutputReadLine();
        _p.BeginErrorReadLine();
        _p.StandardInput.Close();
    }

    /// <summary>Starts `serve ARGS` and waits until the device is live (fails the test otherwise).</summary>
    public static ServerProcess Start(string args, int timeoutMs = 60_000) => StartCommand("serve " + args, timeoutMs);

    /// <summary>Starts `ublk-aot COMMAND_LINE` (serve or recover) and waits until it prints its live device.</summary>
    public static ServerProcess StartCommand(string commandLine, int timeoutMs = 60_000, params (string Name, string Value)[] env)
    {
        IntegrationEnv.Require();
        var s = new ServerProcess(commandLine, env);
        if (!s._firstLine.Wait(timeoutMs) || s._device == null)
        {
            string exit = s._p.HasExited ? "exit " + s._p.ExitCode : "still running";
            s.Dispose();
            Assert.Fail(commandLine + " did not come up within " + timeoutMs + " ms (" + exit + ")\nstdout: " + s.Stdout + "\nstderr: " + s.Stderr);
        }
        // The node appears a moment after the path is printed on slow guests.
        for (int i = 0; i < 200 && !File.Exists(s._device); i++) Thread.Sleep(25);
        Assert.True(File.Exists(s._device), s._device + " does not exist although serve printed it");
        return s;
    }

    /// <summary>Starts `ublk-aot COMMAND_LINE` without waiting for a device (for a server expected to block or fail).</summary>
    public static ServerProcess Launch(string commandLine, params (string Name, string Value)[] env)
    {
        IntegrationEnv.Require();
        return new ServerProcess(commandLine, env);
    }

    public bool HasExited => _p.HasExited;

    /// <summary>Waits for the process to exit by itself (no signal); fails the test after the timeout. Returns the exit code.</summary>
    public int WaitExit(int timeoutMs)
    {
        if (!_p.WaitForExit(timeoutMs))
        {
            string stacks = IntegrationEnv.Sh("cat /proc/" + _p.Id + "/task/*/stack 2>/dev/null | head -80; dmesg | tail -30", 10_000, check: false).Out;
            Assert.Fail(Args + " did not exit within " + timeoutMs + " ms\nkernel stacks/log:\n" + stacks + "\nstderr: " + Stderr);
        }
        _p.WaitForExit();
        return _p.ExitCode;
    }

    public void Signal(int sig) => global::Ublk.Aot.Interop.Libc.Kill(_p.Id, sig);

    /// <summary>Sends SIGTERM (or <paramref name="sig"/>) and waits for exit; returns the exit code.</summary>
    public int Stop(int sig = 15, int timeoutMs = 60_000)
    {
        if (!_p.HasExited) Signal(sig);
        if (!_p.WaitForExit(timeoutMs))
        {
            string stacks = IntegrationEnv.Sh("cat /proc/" + _p.Id + "/task/*/stack 2>/dev/null | head -80; dmesg | tail -30", 10_000, check: false).Out;
            Assert.Fail("serve " + Args + " did not exit within " + timeoutMs + " ms of signal " + sig + "\nkernel stacks/log:\n" + stacks + "\nstderr: " + Stderr);
        }
        _p.WaitForExit();
        return _p.ExitCode;
    }

    /// <summary>Value of one counter from the `stats queue=…` lines (summed over queues), after exit with --stats.</summary>
    public long StatSum(string key)
    {
        long sum = 0;
        foreach (string line in Stderr.Split('\n'))
        {
            if (!line.StartsWith("stats queue=", StringComparison.Ordinal)) continue;
            foreach (string kv in line.Split(' '))
                if (kv.StartsWith(key + "=", StringComparison.Ordinal)) sum += long.Parse(kv.AsSpan(key.Length + 1));
        }
        return sum;
    }

    private bool _keepDevice;

    /// <summary>Disposes the (killed) process but leaves its device to the kernel: it waits for a recovery.</summary>
    public void DisposeKeepingDevice()
    {
        _keepDevice = true;
        Dispose();
    }

    private bool _disposed;

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (!_p.HasExited)
        {
            Signal(15);
            if (!_p.WaitForExit(30_000)) { try { _p.Kill(true); } catch (InvalidOperationException) { } _p.WaitForExit(10_000); }
        }
        if (_device != null && !_keepDevice && Directory.Exists("/sys/class/ublk-char/ublkc" + Id))
            IntegrationEnv.UblkAot("del " + Id, 30_000);
        _p.Dispose();
        _firstLine.Dispose();
    }
}
