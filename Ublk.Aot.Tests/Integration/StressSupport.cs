using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Runtime.InteropServices;
using System.Text;
using System.Threading;
using Ublk.Aot.Backends;
using Ublk.Aot.Interop;
using Ublk.Aot.Ublk;
using Xunit;

namespace Ublk.Aot.Tests.Integration;

/// <summary>
/// Knobs of the stress tests. CI runs the defaults (short); a soak sets them in the environment and passes them into
/// the VM with VM_PASSENV, e.g. <c>UBLK_TORTURE_DURATION=30m UBLK_STRESS_SCALE=10 VM_PASSENV="UBLK_TORTURE_DURATION UBLK_STRESS_SCALE"</c>.
/// <list type="bullet">
/// <item>UBLK_STRESS_SCALE (1): multiplies every default count and duration below.</item>
/// <item>Durations (a number with s, m or h): UBLK_TORTURE_DURATION (25s per backend), UBLK_ORDERING_DURATION (10s per
/// backend), UBLK_STRESS_IO_DURATION (3s of I/O before a stop; the chain's torture runs twice that).</item>
/// <item>Counts: UBLK_CHURN_CYCLES (20 serve cycles; the in-process churn runs twice that), UBLK_STRESS_DEVICES (80 devices
/// at once) and UBLK_STRESS_DEVICE_OPS (40 verified calls on each of them), UBLK_FAULT_OPS (2000 single-block calls per fault run), UBLK_STRESS_ROUNDS (3 concurrent-Dispose rounds),
/// UBLK_STRESS_SERVERS (6 servers stopped at once).</item>
/// <item>UBLK_STRESS_SEED: fixes the random seeds (otherwise fresh each run, printed in every failure).</item>
/// </list>
/// A malformed value fails the test: a soak that silently ran the CI defaults would prove nothing.
/// </summary>
internal static class StressKnobs
{
    public static double Scale
    {
        get
        {
            string? v = Environment.GetEnvironmentVariable("UBLK_STRESS_SCALE");
            if (string.IsNullOrEmpty(v)) return 1;
            if (!double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out double s) || s <= 0 || s > 10_000)
                Assert.Fail("UBLK_STRESS_SCALE must be a positive number, got '" + v + "'");
            return s;
        }
    }

    /// <summary>The environment's duration (30s, 5m, 2h; a bare number is seconds), else <paramref name="ciDefault"/> × scale.</summary>
    public static TimeSpan Duration(string env, TimeSpan ciDefault)
    {
        string? v = Environment.GetEnvironmentVariable(env);
        if (string.IsNullOrEmpty(v)) return ciDefault * Scale;
        double mult = 1;
        string num = v;
        switch (v[^1])
        {
            case 's': num = v[..^1]; break;
            case 'm': num = v[..^1]; mult = 60; break;
            case 'h': num = v[..^1]; mult = 3600; break;
        }
        if (!double.TryParse(num, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) || d <= 0)
            Assert.Fail(env + " must be a duration like 90s, 30m or 2h, got '" + v + "'");
        return TimeSpan.FromSeconds(d * mult);
    }

    /// <summary>The environment's count, else <paramref name="ciDefault"/> × scale (at least 1).</summary>
    public static int Count(string env, int ciDefault)
    {
        string? v = Environment.GetEnvironmentVariable(env);
        if (string.IsNullOrEmpty(v)) return Math.Max(1, (int)Math.Round(ciDefault * Scale));
        if (!int.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n < 1)
            Assert.Fail(env + " must be a positive number, got '" + v + "'");
        return n;
    }

    /// <summary>A seed for one test: UBLK_STRESS_SEED if set, else fresh. Always put it in failure messages.</summary>
    public static int Seed()
    {
        string? v = Environment.GetEnvironmentVariable("UBLK_STRESS_SEED");
        if (string.IsNullOrEmpty(v)) return Random.Shared.Next(1, int.MaxValue);
        if (!int.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out int s))
            Assert.Fail("UBLK_STRESS_SEED must be a non-negative number, got '" + v + "'");
        return s;
    }
}

/// <summary>Page-aligned native memory for O_DIRECT I/O (a managed array may not be aligned).</summary>
internal sealed unsafe class StressBuffer : IDisposable
{
    public byte* Pointer { get; private set; }
    public int Length { get; }

    public StressBuffer(int length)
    {
        Length = length;
        Pointer = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(length, 4096), 4096);
    }

    public Span<byte> Span(int length) => new(Pointer, length);

    public void Dispose()
    {
        if (Pointer != null) { NativeMemory.AlignedFree(Pointer); Pointer = null; }
    }
}

/// <summary>Raw block-device calls for the stress tests: each returns bytes done or -errno, never throws.</summary>
internal static unsafe class StressIo
{
    // linux/fs.h: _IO(0x12, 119) and _IO(0x12, 127); both take u64[2] = {start, length}.
    private const ulong BLKDISCARD = 0x1277;
    private const ulong BLKZEROOUT = 0x127f;

    public static int OpenDirect(string path)
    {
        int fd = Libc.Open(path, Libc.O_RDWR | Libc.O_DIRECT | Libc.O_CLOEXEC, 0);
        return fd >= 0 ? fd : -Errno.Last;
    }

    public static long PRead(int fd, StressBuffer buf, int length, long offset)
    {
        nint n = Libc.PRead(fd, buf.Pointer, (nuint)length, offset);
        return n < 0 ? -Errno.Last : n;
    }

    public static long PWrite(int fd, StressBuffer buf, int length, long offset)
    {
        nint n = Libc.PWrite(fd, buf.Pointer, (nuint)length, offset);
        return n < 0 ? -Errno.Last : n;
    }

    /// <summary>fdatasync: on a block device with a volatile cache this sends a FLUSH to the server.</summary>
    public static int Fsync(int fd) => Libc.FDataSync(fd) == 0 ? 0 : -Errno.Last;

    public static int ZeroOut(int fd, long offset, long length) => RangeIoctl(fd, BLKZEROOUT, offset, length);

    public static int Discard(int fd, long offset, long length) => RangeIoctl(fd, BLKDISCARD, offset, length);

    private static int RangeIoctl(int fd, ulong request, long offset, long length)
    {
        ulong* range = stackalloc ulong[2];
        range[0] = (ulong)offset;
        range[1] = (ulong)length;
        return Libc.Ioctl(fd, request, range) == 0 ? 0 : -Errno.Last;
    }

    /// <summary>A 64 KiB O_DIRECT write and read-back at a seed-chosen offset: the device works.</summary>
    public static void RoundTrip(string path, int seed)
    {
        using var d = new BlockDevice(path);
        var data = new byte[64 * 1024];
        new Random(seed).NextBytes(data);
        long off = 4096L * (seed % 64);
        d.Write(data, off);
        byte[] got = d.Read(data.Length, off);
        Assert.True(data.AsSpan().SequenceEqual(got), BlockDevice.Diff(path, off, data, got));
    }

    /// <summary>"EIO", "short (n of m bytes)" …: what a call's result means.</summary>
    public static string Describe(long result, int wanted)
        => result < 0 ? Errno.Name((int)result) : result == wanted ? "ok" : "short (" + result + " of " + wanted + " bytes)";
}

/// <summary>The kernel's side of things: ublk devices in sysfs, tasks in D state, the ublks_max limit.</summary>
internal static class StressKernel
{
    public const string UblksMaxPath = "/sys/module/ublk_drv/parameters/ublks_max";

    public static bool CharDeviceExists(uint id) => Directory.Exists("/sys/class/ublk-char/ublkc" + id);

    /// <summary>Waits until /sys/class/ublk-char/ublkcID is gone; false on timeout.</summary>
    public static bool WaitGone(uint id, int timeoutMs)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (CharDeviceExists(id))
        {
            if (sw.ElapsedMilliseconds > timeoutMs) return false;
            Thread.Sleep(20);
        }
        return true;
    }

    public static bool WaitUntil(Func<bool> cond, int timeoutMs)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (!cond())
        {
            if (sw.ElapsedMilliseconds > timeoutMs) return cond();
            Thread.Sleep(20);
        }
        return true;
    }

    public static int UblksMax
    {
        get => int.Parse(File.ReadAllText(UblksMaxPath).Trim(), CultureInfo.InvariantCulture);
        // The parameter is 0644 and ADD_DEV compares against it on every call, so a write takes effect at once
        // (no rmmod/modprobe needed, and no risk of leaving the module unloaded).
        set
        {
            File.WriteAllText(UblksMaxPath, value.ToString(CultureInfo.InvariantCulture));
            Assert.True(UblksMax == value, "writing " + value + " to " + UblksMaxPath + " did not stick: " + UblksMax);
        }
    }

    /// <summary>Tasks (threads included) in uninterruptible sleep right now: "pid/tid comm wchan".</summary>
    public static List<string> DStateTasks()
    {
        var found = new List<string>();
        foreach (string proc in Directory.GetDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(proc), out _)) continue;
            string[] tasks;
            try { tasks = Directory.GetDirectories(Path.Combine(proc, "task")); }
            catch (IOException) { continue; }
            catch (UnauthorizedAccessException) { continue; }
            foreach (string task in tasks)
            {
                string stat;
                try { stat = File.ReadAllText(Path.Combine(task, "stat")); }
                catch (IOException) { continue; }
                int close = stat.LastIndexOf(')');
                if (close < 0 || close + 2 >= stat.Length || stat[close + 2] != 'D') continue;
                string comm = stat[(stat.IndexOf('(') + 1)..close];
                string wchan = "";
                try { wchan = File.ReadAllText(Path.Combine(task, "wchan")); } catch (IOException) { }
                found.Add(Path.GetFileName(proc) + "/" + Path.GetFileName(task) + " " + comm + " wchan=" + wchan);
            }
        }
        return found;
    }

    /// <summary>
    /// Fails unless a moment comes, within the timeout, when no task is in D state. A busy guest shows brief D
    /// states (I/O in progress); a task wedged in the kernel stays there, and the failure prints its kernel stack.
    /// </summary>
    public static void AssertNoDState(string context, int timeoutMs = 20_000)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        List<string> d;
        while ((d = DStateTasks()).Count > 0 && sw.ElapsedMilliseconds < timeoutMs) Thread.Sleep(250);
        if (d.Count == 0) return;
        var msg = new StringBuilder(context + ": tasks stuck in D state for " + timeoutMs + " ms:\n");
        foreach (string t in d)
        {
            msg.AppendLine("  " + t);
            string[] ids = t[..t.IndexOf(' ')].Split('/');
            try { msg.AppendLine(File.ReadAllText("/proc/" + ids[0] + "/task/" + ids[1] + "/stack")); } catch (IOException) { }
        }
        Assert.Fail(msg.ToString());
    }

    /// <summary>
    /// Kernel stacks of a process's threads, identical stacks grouped (with the thread names), and the tail of the
    /// kernel log: for hang messages.
    /// </summary>
    public static string Diagnostics(int pid)
    {
        var groups = new Dictionary<string, List<string>>();
        string[] tasks;
        try { tasks = Directory.GetDirectories("/proc/" + pid + "/task"); }
        catch (IOException) { return "process " + pid + " is gone"; }
        foreach (string task in tasks)
        {
            string comm, stack;
            try
            {
                comm = File.ReadAllText(Path.Combine(task, "comm")).Trim();
                stack = File.ReadAllText(Path.Combine(task, "stack"));
            }
            catch (IOException) { continue; }
            if (!groups.TryGetValue(stack, out List<string>? names)) groups[stack] = names = new List<string>();
            names.Add(comm);
        }
        var sb = new StringBuilder("kernel stacks of process " + pid + ":\n");
        foreach (var (stack, names) in groups)
            sb.Append("== ").Append(names.Count).Append(" thread(s): ").Append(string.Join(" ", names.Take(12)))
              .Append(names.Count > 12 ? " …" : "").Append('\n').Append(stack);
        sb.Append("dmesg:\n").Append(IntegrationEnv.Sh("dmesg | tail -30", 30_000, check: false).Out);
        return sb.ToString();
    }
}

/// <summary>What one process holds: fds (with their targets), mappings, threads and virtual size.</summary>
internal sealed class StressProcSnapshot
{
    public Dictionary<int, string> Fds { get; } = new();
    public string[] Maps { get; private set; } = [];
    public List<string> Threads { get; } = new();
    public long VmSizeKb { get; private set; }

    public static StressProcSnapshot Take()
    {
        var s = new StressProcSnapshot();
        foreach (string fd in Directory.GetFileSystemEntries("/proc/self/fd"))
        {
            string target;
            try { target = new FileInfo(fd).LinkTarget ?? "?"; }
            catch (IOException) { continue; } // the directory handle of this very enumeration, closed by now
            s.Fds[int.Parse(Path.GetFileName(fd), CultureInfo.InvariantCulture)] = target;
        }
        s.Maps = File.ReadAllLines("/proc/self/maps");
        foreach (string task in Directory.GetDirectories("/proc/self/task"))
        {
            try { s.Threads.Add(Path.GetFileName(task) + ":" + File.ReadAllText(Path.Combine(task, "comm")).Trim()); }
            catch (IOException) { } // exited meanwhile
        }
        foreach (string line in File.ReadAllLines("/proc/self/status"))
            if (line.StartsWith("VmSize:", StringComparison.Ordinal))
                s.VmSizeKb = long.Parse(line["VmSize:".Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
        return s;
    }

    /// <summary>Fd targets that name ublk or io_uring objects (the things a device owns).</summary>
    public List<string> UblkFds()
    {
        var l = new List<string>();
        foreach (var (fd, t) in Fds)
            if (t.Contains("ublk", StringComparison.Ordinal) || t.Contains("io_uring", StringComparison.Ordinal) || t.Contains("eventfd", StringComparison.Ordinal))
                l.Add(fd + " -> " + t);
        l.Sort(StringComparer.Ordinal);
        return l;
    }

    public List<string> UblkMaps()
    {
        var l = new List<string>();
        foreach (string m in Maps) if (m.Contains("ublk", StringComparison.Ordinal) || m.Contains("io_uring", StringComparison.Ordinal)) l.Add(m);
        return l;
    }

    /// <summary>Queue threads are named ublk{dev}q{queue} (the kernel's comm keeps the first 15 bytes).</summary>
    public List<string> QueueThreads() => Threads.FindAll(t => System.Text.RegularExpressions.Regex.IsMatch(t, @":ublk\d+q\d+$"));
}

/// <summary>A device served by the library inside the test process, from a --backend SPEC string.</summary>
internal sealed class StressLibDevice : IDisposable
{
    public BackendSpec Spec { get; }
    public UblkDevice Device { get; }
    public string Path => Device.BlockDevicePath;
    public uint Id => Device.Id;

    private StressLibDevice(BackendSpec spec, UblkDevice dev)
    {
        Spec = spec;
        Device = dev;
    }

    public static StressLibDevice Create(UblkControl ctrl, string spec, DeviceOptions o)
    {
        BackendSpec s = BackendTable.Parse(spec, new SpecContext(o.ReadOnly));
        try
        {
            UblkDevice dev = s.Build(new Creator(ctrl, o));
            return new StressLibDevice(s, dev);
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    /// <summary>The RAM behind a mem: device.</summary>
    public MemStore Store => ((MemSpec)Spec).Store;

    public QueueStats StatsSum()
    {
        QueueStats sum = default;
        foreach (UblkQueue q in Device.Queues)
        {
            QueueStats s = q.Stats;
            sum.Reads += s.Reads; sum.Writes += s.Writes; sum.Flushes += s.Flushes; sum.Discards += s.Discards;
            sum.WriteZeroes += s.WriteZeroes; sum.Errors += s.Errors; sum.BytesRead += s.BytesRead; sum.BytesWritten += s.BytesWritten;
        }
        return sum;
    }

    /// <summary>Stops the device (the library's shutdown order), then frees the backend.</summary>
    public void Dispose()
    {
        Device.Dispose();
        Spec.Dispose();
    }

    private sealed class Creator(UblkControl ctrl, DeviceOptions o) : IBackendConsumer<UblkDevice>
    {
        public UblkDevice Use<TBackend>(TBackend backend, BackendCaps caps, int[] files) where TBackend : struct, IBackend
            => UblkDevice.Create(ctrl, o, backend, caps, files);
    }
}

/// <summary>Starts threads and joins them with one deadline, failing with a diagnosis when any is stuck.</summary>
internal static class StressThreads
{
    public static Thread Start(string name, Action body)
    {
        var t = new Thread(() => body()) { IsBackground = true, Name = name };
        t.Start();
        return t;
    }

    /// <summary>
    /// Joins all with one deadline; fails, naming those still running and showing the kernel stacks of process
    /// <paramref name="pid"/> (the server, or this process for the library), if any is left.
    /// </summary>
    public static void AssertAllEnd(IEnumerable<Thread> threads, TimeSpan timeout, string what, int pid)
    {
        List<string> stuck = JoinAll(threads, timeout);
        if (stuck.Count > 0)
            Assert.Fail(what + ": still blocked after " + timeout.TotalSeconds + " s: " + string.Join(", ", stuck) + "\n" + StressKernel.Diagnostics(pid));
    }

    public static void AssertNoErrors(IEnumerable<Exception?> errors, string what)
    {
        foreach (Exception? e in errors) if (e != null) Assert.Fail(what + ": " + e);
    }

    /// <summary>Joins all; returns the names of those still running after <paramref name="timeout"/>.</summary>
    public static List<string> JoinAll(IEnumerable<Thread> threads, TimeSpan timeout)
    {
        DateTime deadline = DateTime.UtcNow + timeout;
        var stuck = new List<string>();
        foreach (Thread t in threads)
        {
            TimeSpan left = deadline - DateTime.UtcNow;
            if (!t.Join(left > TimeSpan.Zero ? left : TimeSpan.Zero)) stuck.Add(t.Name ?? "?");
        }
        return stuck;
    }
}
