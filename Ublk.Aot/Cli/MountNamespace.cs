using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Text;
using Ublk.Aot.Interop;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Cli;

/// <summary>
/// `serve` and `recover` run in a mount namespace of their own, private (MS_PRIVATE|MS_REC on /), holding no
/// mount of any ublk disk.
/// <para>Why (libublk-rs #50/#51, ublksrv #186): a server that shares a mount namespace with a filesystem mounted
/// on its own /dev/ublkbN can be the last task holding that namespace (the shell or container that mounted it has
/// exited). Its exit then drops the namespace, which unmounts the filesystem from inside do_exit(): the unmount
/// flushes to /dev/ublkbN, whose server is the task that is exiting. With a device that waits for recovery the
/// flush never completes and the server never exits.</para>
/// <para>How: the namespace is per task. unshare(CLONE_NEWNS) on the main thread (the kernel gives that thread its
/// own fs_struct too) moves only that thread; the runtime's threads that exist before Main stay behind. So the
/// main thread, alone in the new namespace, re-executes this binary (execve keeps the pid, the namespace of the
/// calling thread and nothing of the other threads), and the new image starts every thread in the new namespace.
/// A process that is single-threaded at this point skips the re-exec.</para>
/// </summary>
internal static class MountNamespace
{
    /// <summary>Set (to our pid) across the re-exec: the new image is already in its own namespace.</summary>
    private const string Marker = "UBLK_AOT_OWN_MNTNS";

    /// <summary>
    /// Puts this process in a private mount namespace of its own, re-executing with <paramref name="argv"/> when other
    /// threads exist. Returns when done (or when it cannot be done: without CAP_SYS_ADMIN, a line on stderr says so).
    /// </summary>
    public static void Enter(string[] argv)
    {
        string pid = Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
        if (Environment.GetEnvironmentVariable(Marker) == pid)
        {
            Trace("private, after re-exec (" + ThreadCount() + " thread(s) now)");
            return;
        }
        // Test seam, not an option: reproduces by hand the hang this class prevents (MountNamespaceTests describes it).
        if (Environment.GetEnvironmentVariable("UBLK_AOT_TEST_HOOK") == "no-mntns") return;
        int threads = ThreadCount();
        if (Libc.Unshare(Libc.CLONE_NEWNS) != 0)
        {
            int e = Errno.Last;
            // EPERM: no CAP_SYS_ADMIN. Such a process cannot make a ublk device either (unprivileged ublk is not
            // used): the server fails on /dev/ublk-control in its own one line, which a warning here would precede.
            if (e == Errno.EPERM) return;
            Console.Error.WriteLine("ublk-aot: warning: cannot make a mount namespace of its own (unshare: " + Errno.Name(e) +
                "); a filesystem mounted on this device in this namespace can hang this server's exit");
            return;
        }
        // Nothing mounted or unmounted in the old namespace reaches the new one, and the other way round.
        if (Libc.Mount(null, "/", null, Libc.MS_REC | Libc.MS_PRIVATE, 0) != 0)
            throw new UblkException("cannot make the server's mount namespace private (mount MS_PRIVATE on /: " + Errno.Name(Errno.Last) + ")", Errno.Last);
        if (threads <= 1)
        {
            _inPlace = true;
            Trace("private, unshared in place (1 thread)");
            return;
        }
        if (Libc.SetEnv(Marker, pid, 1) != 0)
            throw new UblkException("setenv " + Marker + ": " + Errno.Name(Errno.Last), Errno.Last);
        string[] args = new string[argv.Length + 1];
        args[0] = Environment.GetCommandLineArgs()[0];
        argv.CopyTo(args, 1);
        Console.Out.Flush();
        Console.Error.Flush();
        // The path given to execve names the new image (its comm: what ps, pgrep and systemctl status show), so
        // /proc/self/exe would rename the server "exe". The binary's own path, unless it was removed or renamed
        // over since it started (then " (deleted)"): /proc/self/exe still reaches the running file.
        string self = Environment.ProcessPath is { } p && !p.EndsWith(" (deleted)", StringComparison.Ordinal) && File.Exists(p) ? p : "/proc/self/exe";
        int err = Libc.Exec(self, args);
        throw new UblkException("cannot re-execute " + self + " in the server's mount namespace: " + Errno.Name(err), err);
    }

    /// <summary>
    /// Detaches, in this process's namespace only, every mount of a ublk disk (another server's device mounted before
    /// this one started): this server must never be the one holding such a mount. Call it after the backend is open
    /// (a backing file may live on such a filesystem: an open file keeps it alive without the mount).
    /// </summary>
    public static void DetachUblkMounts()
    {
        if (!_inPlace && Environment.GetEnvironmentVariable(Marker) != Environment.ProcessId.ToString(CultureInfo.InvariantCulture)) return;
        var points = new List<string>();
        try
        {
            foreach (string line in File.ReadAllLines("/proc/self/mountinfo"))
            {
                // ID PARENT MAJ:MIN ROOT MOUNTPOINT ... (proc(5))
                string[] f = line.Split(' ');
                if (f.Length < 5 || f[2].StartsWith("0:", StringComparison.Ordinal)) continue;
                string? target = Libc.ReadLinkText("/sys/dev/block/" + f[2]);
                if (target == null || !Path.GetFileName(target).StartsWith("ublkb", StringComparison.Ordinal)) continue;
                points.Add(Unescape(f[4]));
            }
        }
        catch (IOException) { return; }
        // Deepest (latest) first.
        for (int i = points.Count - 1; i >= 0; i--)
        {
            if (Libc.Umount2(points[i], Libc.MNT_DETACH) == 0) Trace("detached " + points[i]);
        }
    }

    /// <summary>True once <see cref="Enter"/> unshared in place (no re-exec).</summary>
    private static bool _inPlace;

    private static int ThreadCount()
    {
        try { return Directory.GetDirectories("/proc/self/task").Length; }
        catch (IOException) { return int.MaxValue; }
    }

    /// <summary>mountinfo escapes space, tab, newline and backslash as \ooo.</summary>
    private static string Unescape(string s)
    {
        if (s.IndexOf('\\') < 0) return s;
        var b = new StringBuilder(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (s[i] == '\\' && IsOctal(s, i + 1))
            {
                b.Append((char)((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
                i += 3;
            }
            else b.Append(s[i]);
        }
        return b.ToString();
    }

    private static bool IsOctal(string s, int at)
        => at + 2 < s.Length && s[at] is >= '0' and <= '7' && s[at + 1] is >= '0' and <= '7' && s[at + 2] is >= '0' and <= '7';

    /// <summary>UBLK_AOT_TRACE_MNTNS=1: one line per step on stderr (for the tests and for diagnosis).</summary>
    private static void Trace(string what)
    {
        if (Environment.GetEnvironmentVariable("UBLK_AOT_TRACE_MNTNS") == "1") Console.Error.WriteLine("ublk-aot: mount namespace: " + what);
    }
}
