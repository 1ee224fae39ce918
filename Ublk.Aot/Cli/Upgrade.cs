using System;
using System.Diagnostics;
using System.Globalization;
using System.Threading;
using Ublk.Aot.Abi;
using Ublk.Aot.Interop;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Cli;

/// <summary>
/// ublk-aot upgrade ID [--binary PATH] [--stats]: a new server process (this binary, or PATH) takes device ID over
/// from its live server without a failed request, then this process becomes that server (it execs `PATH recover ID`).
/// <list type="bullet">
/// <item>A kernel with QUIESCE_DEV (7.x; the device was made with UBLK_F_QUIESCE): the kernel stops handing requests
/// to the old server and aborts its idle commands; the old server commits what it holds, leaves the device and exits
/// 0; requests arriving meanwhile wait in the kernel for the next server.</item>
/// <item>Without it (6.12): the old server gets SIGUSR1, commits what its backend holds, leaves requests that arrive
/// after that to the kernel and exits 0; the kernel re-issues those to the next server (USER_RECOVERY_REISSUE).</item>
/// </list>
/// Either way the user sees a pause (until the new server's END_USER_RECOVERY), never an error.
/// </summary>
public static class Upgrade
{
    public static int Run(string[] argv)
    {
        if (argv.Length == 0 || !CommandLine.TryParseId(argv[0], out uint id))
            throw new UsageException("upgrade: expected a device id, got '" + (argv.Length == 0 ? "" : argv[0]) + "'");
        string binary = Environment.ProcessPath ?? "/proc/self/exe";
        bool stats = false;
        for (int i = 1; i < argv.Length; i++)
        {
            switch (argv[i])
            {
                case "--binary":
                    if (i + 1 >= argv.Length) throw new UsageException("upgrade: --binary needs a path");
                    binary = System.IO.Path.GetFullPath(argv[++i]);
                    break;
                case "--stats": stats = true; break;
                default: throw new UsageException("upgrade: unexpected argument '" + argv[i] + "'");
            }
        }

        // Nothing is touched until the new binary has shown it runs and the device can be handed over.
        CheckBinary(binary);
        TimeSpan deadline = CommandLine.ControlTimeout == Timeout.InfiniteTimeSpan ? UblkControl.DefaultTimeout : CommandLine.ControlTimeout;
        using (UblkControl ctrl = CommandLine.OpenControl())
        {
            if (ctrl.TryGetDevInfo(id, out ublksrv_ctrl_dev_info info) < 0) throw new UsageException("upgrade: no ublk device " + id);
            if ((info.flags & UblkConst.UBLK_F_USER_RECOVERY) == 0)
                throw new UsageException("upgrade: ublk device " + id + " was created without --recovery: it cannot change servers (restart it instead)");
            if ((info.flags & UblkConst.UBLK_F_USER_RECOVERY_FAIL_IO) != 0)
                throw new UsageException("upgrade: ublk device " + id + " uses --recovery fail-io: its I/O would fail while it changes servers; only reissue devices are upgraded");
            if (UblkDevice.WaitsForRecovery(info))
                throw new UsageException("upgrade: ublk device " + id + " has no server (" + UblkConst.StateName(info.state) + "): use ublk-aot recover " + id);
            if (info.state != UblkConst.UBLK_S_DEV_LIVE || !CommandLine.ServerAlive(info))
                throw new UsageException("upgrade: ublk device " + id + " is " + UblkConst.StateName(info.state) + " and its server (pid " + info.ublksrv_pid + ") is " +
                    (CommandLine.ServerAlive(info) ? "alive" : "gone") + ": nothing to hand over");
            if (!StateFile.Exists(id))
                throw new UsageException("upgrade: no state file " + StateFile.PathOf(id) + " for ublk device " + id + ": the new server would not know its backend");
            int oldPid = info.ublksrv_pid;

            if ((info.flags & UblkConst.UBLK_F_QUIESCE) != 0)
            {
                Console.Error.WriteLine("ublk-aot: upgrade: quiescing ublk device " + id + " (QUIESCE_DEV); server pid " + oldPid + " hands over");
                int rc = ctrl.QuiesceDev(id, deadline);
                if (rc < 0)
                {
                    // EBUSY: a queue never had an idle tag in time. The kernel leaves the device taking no new I/O, so
                    // finish the hand-over the other way rather than leave it stalled.
                    Console.Error.WriteLine("ublk-aot: upgrade: QUIESCE_DEV failed (" + Errno.Name(rc) + "); asking the server to hand over (SIGUSR1)");
                    Signal(oldPid, id);
                }
            }
            else
            {
                Console.Error.WriteLine("ublk-aot: upgrade: this kernel (" + UblkDevice.KernelRelease() + ") has no QUIESCE_DEV for ublk device " + id +
                    "; asking server pid " + oldPid + " to hand over (SIGUSR1); requests it cannot finish are re-issued to the new server");
                Signal(oldPid, id);
            }
            WaitHandedOver(ctrl, id, oldPid, deadline);
        }

        string[] args = stats
            ? [binary, "recover", id.ToString(CultureInfo.InvariantCulture), "--timeout", TimeoutArg(), "--stats"]
            : [binary, "recover", id.ToString(CultureInfo.InvariantCulture), "--timeout", TimeoutArg()];
        Console.Error.WriteLine("ublk-aot: upgrade: ublk device " + id + " waits for its new server: exec " + binary + " recover " + id);
        Console.Error.Flush();
        Console.Out.Flush();
        int err = Libc.Exec(binary, args);
        // The device waits (QUIESCED); the user recovers it by hand.
        throw new UblkException("upgrade: exec " + binary + " failed (" + Errno.Name(err) + "); ublk device " + id +
            " waits for a server: run ublk-aot recover " + id, err);
    }

    private static string TimeoutArg()
        => CommandLine.ControlTimeout == Timeout.InfiniteTimeSpan ? "0" : ((long)CommandLine.ControlTimeout.TotalSeconds).ToString(CultureInfo.InvariantCulture);

    /// <summary>The new binary must run and say it is ublk-aot before the old server is asked to leave.</summary>
    private static void CheckBinary(string binary)
    {
        if (!System.IO.File.Exists(binary)) throw new UsageException("upgrade: " + binary + ": no such file");
        if (!Libc.IsExecutable(binary)) throw new UsageException("upgrade: " + binary + " is not executable");
        int code = Libc.RunCaptured(binary, [binary, "--version"], 10_000, out string output);
        string first = output.Trim().Split('\n')[0].Trim();
        if (first.Length > 80) first = first[..80] + "...";
        if (code < -1) throw new UsageException("upgrade: cannot run " + binary + ": " + Errno.Name(code) + "; the device was not touched");
        if (code == -1) throw new UsageException("upgrade: " + binary + " --version did not answer within 10 s; the device was not touched");
        if (code != 0 || !first.StartsWith("ublk-aot ", StringComparison.Ordinal))
            throw new UsageException("upgrade: " + binary + " --version gave exit " + code + " and '" + first + "', not a ublk-aot version; the device was not touched");
    }

    private static void Signal(int pid, uint id)
    {
        if (Libc.Kill(pid, Libc.SIGUSR1) != 0)
            throw new UblkException("upgrade: cannot signal server pid " + pid + " of ublk device " + id + ": " + Errno.Name(Errno.Last), Errno.Last);
    }

    /// <summary>No such process, or only its zombie (it has exited; its parent has not reaped it yet).</summary>
    private static bool ProcessGone(int pid)
    {
        if (Libc.Kill(pid, 0) != 0 && Errno.Last == Errno.ESRCH) return true;
        try
        {
            // /proc/PID/stat: "pid (comm) S ..."; comm may hold spaces and parentheses, the state follows the last ')'.
            string stat = System.IO.File.ReadAllText("/proc/" + pid.ToString(CultureInfo.InvariantCulture) + "/stat");
            int close = stat.LastIndexOf(')');
            return close > 0 && close + 2 < stat.Length && stat[close + 2] is 'Z' or 'X';
        }
        catch (System.IO.IOException) { return true; }
    }

    /// <summary>Waits until the old server is gone and the kernel waits for the next one (QUIESCED).</summary>
    private static void WaitHandedOver(UblkControl ctrl, uint id, int oldPid, TimeSpan deadline)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            if (ctrl.TryGetDevInfo(id, out ublksrv_ctrl_dev_info info) < 0)
                throw new UblkException("upgrade: ublk device " + id + " disappeared during the hand-over", Errno.ENODEV);
            bool oldGone = ProcessGone(oldPid);
            if (UblkDevice.WaitsForRecovery(info) && oldGone) return;
            if (info.state == UblkConst.UBLK_S_DEV_DEAD)
                throw new UblkException("upgrade: ublk device " + id + " died during the hand-over (DEAD): remove it with ublk-aot del " + id, Errno.EIO);
            if (sw.Elapsed > deadline)
                throw new UblkException("upgrade: the server (pid " + oldPid + ") of ublk device " + id + " did not hand over within " + (int)deadline.TotalSeconds +
                    " s (state " + UblkConst.StateName(info.state) + ", server " + (oldGone ? "gone" : "alive") + ", kernel " + UblkDevice.KernelRelease() + ")", Errno.ETIMEDOUT);
            Thread.Sleep(20);
        }
    }
}
