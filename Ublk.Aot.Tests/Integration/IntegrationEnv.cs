using System;
using System.Diagnostics;
using System.IO;
using System.Text;
using System.Threading;
using Xunit;

namespace Ublk.Aot.Tests.Integration;

/// <summary>Integration tests share the kernel's ublk state: one collection, run one at a time.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class UblkCollection
{
    public const string Name = "ublk";
}

/// <summary>
/// What every integration test needs: root, ublk_drv, the static binary. Anything missing is a hard failure
/// with a message saying what is missing — these tests never skip.
/// </summary>
public static class IntegrationEnv
{
    private static readonly object Gate = new();
    private static bool _checked;

    public static string RepoRoot { get; } = FindRoot();

    public static string Binary => Path.Combine(RepoRoot, "out", "ublk-aot");

    private static string FindRoot()
    {
        for (string? d = AppContext.BaseDirectory; d != null; d = Path.GetDirectoryName(d))
            if (File.Exists(Path.Combine(d, "Ublk.Aot.csproj"))) return d;
        throw new InvalidOperationException("repo root (Ublk.Aot.csproj) not found above " + AppContext.BaseDirectory);
    }

    /// <summary>Fails the test unless root, ublk_drv and out/ublk-aot are all there (loads ublk_drv if needed).</summary>
    public static void Require()
    {
        lock (Gate)
        {
            if (_checked && File.Exists("/dev/ublk-control")) return;
            Assert.True(Environment.UserName == "root" || global::Ublk.Aot.Interop.Libc.GetEuid() == 0,
                "integration tests need root (they create block devices)");
            Assert.True(File.Exists(Binary), "missing " + Binary + ": run ./build.sh first");
            if (!File.Exists("/dev/ublk-control"))
            {
                Sh("modprobe ublk_drv", 60_000, check: false);
            }
            if (!File.Exists("/dev/ublk-control"))
                Assert.Fail("ublk_drv is not available on this kernel (" + File.ReadAllText("/proc/sys/kernel/osrelease").Trim() +
                    "): /dev/ublk-control missing and 'modprobe ublk_drv' failed. Run the integration suite in the VM bench: ./build.sh test");
            _checked = true;
        }
    }

    public readonly record struct Result(int Code, string Out, string Err)
    {
        public override string ToString() => "exit " + Code + "\nstdout: " + Out + "\nstderr: " + Err;
    }

    /// <summary>Runs a program to completion (killed and failed after the timeout).</summary>
    public static Result Run(string file, string args, int timeoutMs = 120_000, string? stdin = null)
    {
        var psi = new ProcessStartInfo(file, args)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        using var p = Process.Start(psi)!;
        var o = new StringBuilder();
        var e = new StringBuilder();
        p.OutputDataReceived += (_, a) => { if (a.Data != null) lock (o) o.AppendLine(a.Data); };
        p.ErrorDataReceived += (_, a) => { if (a.Data != null) lock (e) e.AppendLine(a.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        if (stdin != null) p.StandardInput.Write(stdin);
        p.StandardInput.Close();
        if (!p.WaitForExit(timeoutMs))
        {
            try { p.Kill(true); } catch (InvalidOperationException) { }
            p.WaitForExit(10_000);
            Assert.Fail("timed out after " + timeoutMs + " ms: " + file + " " + args + "\nstdout: " + o + "\nstderr: " + e);
        }
        p.WaitForExit();
        lock (o) lock (e) return new Result(p.ExitCode, o.ToString(), e.ToString());
    }

    /// <summary>Runs a shell command line; with check, a non-zero exit fails the test.</summary>
    public static Result Sh(string command, int timeoutMs = 120_000, bool check = true)
    {
        Result r = Run("/bin/bash", "-c \"" + command.Replace("\\", "\\\\").Replace("\"", "\\\"") + "\"", timeoutMs);
        if (check) Assert.True(r.Code == 0, "command failed: " + command + "\n" + r);
        return r;
    }

    /// <summary>Runs out/ublk-aot with arguments.</summary>
    public static Result UblkAot(string args, int timeoutMs = 60_000) => Run(Binary, args, timeoutMs);

    /// <summary>Kernel ublk devices present right now (ids).</summary>
    public static string[] KernelDevices()
        => Directory.Exists("/sys/class/ublk-char") ? Directory.GetFileSystemEntries("/sys/class/ublk-char") : [];

    /// <summary>Waits until no ublk device remains; fails with the list otherwise.</summary>
    public static void AssertNoDevices(int timeoutMs = 10_000)
    {
        var sw = Stopwatch.StartNew();
        while (KernelDevices().Length > 0 && sw.ElapsedMilliseconds < timeoutMs) Thread.Sleep(50);
        Assert.True(KernelDevices().Length == 0, "ublk devices left behind: " + string.Join(", ", KernelDevices()));
    }

    /// <summary>
    /// A scratch folder for backing files: tmpfs (/dev/shm) where there is one (the guest's /tmp is an overlayfs
    /// in RAM; tmpfs is the simpler, faster home for images).
    /// </summary>
    public static string TempDir(string name)
    {
        string root = Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();
        string d = Path.Combine(root, "ublk-it-" + name + "-" + Environment.ProcessId);
        Directory.CreateDirectory(d);
        return d;
    }
}
