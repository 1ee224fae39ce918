using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Threading;
using Ublk.Aot.Abi;
using Ublk.Aot.Backends;
using Ublk.Aot.Interop;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Cli;

/// <summary>The ublk-aot command line. Exit codes: 0 ok, 1 runtime failure, 2 bad input or environment.</summary>
public static class CommandLine
{
    public const string Version = "0.1.0";

    /// <summary>The top-level usage (generated from <see cref="CommandTable"/>).</summary>
    public static string Usage => CommandTable.Usage();

    public static int Run(string[] args)
    {
        try
        {
            string[] original = args;
            args = TakeTimeout(args);
            if (args.Length == 0) { Console.Error.Write(CommandTable.Usage()); return 2; }
            string cmd = args[0];
            string[] rest = args[1..];
            switch (cmd)
            {
                case "--version" or "version" or "-V":
                    if (rest.Length > 0) throw new UsageException(cmd + ": unexpected argument '" + rest[0] + "'");
                    return PrintVersion();
                case "--help" or "-h":
                    if (rest.Length > 0) return Help(rest);
                    Console.Write(CommandTable.Usage());
                    return 0;
            }
            Command c = CommandTable.Find(cmd) ?? throw new UsageException("unknown command '" + cmd + "' (" + CommandNames() + "; ublk-aot --help)");
            // Unknown, duplicated and value-less options, and extra words, are refused here, before anything is opened.
            if (CommandTable.Check(c, rest)) { Console.Write(CommandTable.Help(c)); return 0; }
            return cmd switch
            {
                "help" => Help(rest),
                "features" => Features(rest),
                "serve" => ServeInOwnNamespace(original, rest),
                "recover" => RecoverInOwnNamespace(original, rest),
                "upgrade" => Upgrade.Run(rest),
                "list" => ListDevices(rest),
                "del" => Delete(rest),
                "resize" => Resize(rest),
                "stats" => Stats(rest),
                "install" => Install.Run(rest),
                "udev-name" => Install.UdevName(rest),
                _ => throw new InvalidOperationException("command '" + cmd + "' is in the table but not dispatched"),
            };
        }
        catch (UblkAotException e)
        {
            Console.Error.WriteLine("ublk-aot: " + e.Message);
            return e.IsBadInput ? 2 : 1;
        }
    }

    private static string CommandNames()
    {
        var names = new List<string>();
        foreach (Command c in CommandTable.Commands) if (!c.Hidden) names.Add(c.Name);
        names.Add("--version");
        return string.Join(", ", names);
    }

    /// <summary>
    /// serve: the arguments are checked in full first (a usage error costs no namespace and no re-exec), then the
    /// process moves to a mount namespace of its own (<see cref="MountNamespace"/>; this may re-execute the binary
    /// with <paramref name="original"/>), then it serves.
    /// </summary>
    private static int ServeInOwnNamespace(string[] original, string[] rest)
    {
        Serve.ParseCommandLineOrConfig(rest); // a usage error costs no exec
        MountNamespace.Enter(original);
        return Serve.Run(rest);
    }

    private static int RecoverInOwnNamespace(string[] original, string[] rest)
    {
        Serve.ParseRecover(rest); // a usage error costs no exec
        MountNamespace.Enter(original);
        return Serve.Recover(rest);
    }

    /// <summary>help [COMMAND] | --man | --bash-completion: on stdout, exit 0.</summary>
    private static int Help(string[] args)
    {
        if (args.Length == 0) { Console.Write(CommandTable.Usage()); return 0; }
        if (args.Length > 1) throw new UsageException("help: expected one command, --man or --bash-completion");
        switch (args[0])
        {
            case "--man": Console.Write(CommandTable.Man()); return 0;
            case "--bash-completion": Console.Write(CommandTable.BashCompletion()); return 0;
        }
        Command c = CommandTable.Find(args[0]) ?? throw new UsageException("help: unknown command '" + args[0] + "' (" + CommandNames() + ")");
        Console.Write(CommandTable.Help(c));
        return 0;
    }

    /// <summary>A device id word (0 to 2^31-2, digits only), or a usage error naming the command.</summary>
    internal static uint ParseId(string command, string word)
        => TryParseId(word, out uint id) ? id : throw new UsageException(command + ": '" + word + "' is not a device id");

    /// <summary>A device id word: digits only, 0 to 2^31-2 (the kernel's ids are ints; -1 asks it to pick one).</summary>
    internal static bool TryParseId(string word, out uint id)
        => uint.TryParse(word, NumberStyles.None, CultureInfo.InvariantCulture, out id) && id <= int.MaxValue - 1;

    public static readonly OptionRange TimeoutRange = new("--timeout", 0, 86400);

    /// <summary>The deadline of every control command this process sends (--timeout; 0 = none).</summary>
    public static TimeSpan ControlTimeout { get; private set; } = UblkControl.DefaultTimeout;

    /// <summary>Opens /dev/ublk-control with this process's deadline.</summary>
    internal static UblkControl OpenControl() => new(ControlTimeout);

    /// <summary>Removes `--timeout SECONDS` (before or after the command word) from the arguments and applies it.</summary>
    internal static string[] TakeTimeout(string[] args)
    {
        int at = Array.IndexOf(args, "--timeout");
        if (at < 0) return args;
        if (Array.IndexOf(args, "--timeout", at + 1) > at + 1) throw new UsageException("--timeout given twice");
        if (at + 1 >= args.Length) throw new UsageException("--timeout needs a value (seconds)");
        string v = args[at + 1];
        if (!int.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out int seconds) || !TimeoutRange.Contains(seconds))
            throw new UsageException(TimeoutRange.Refuse(v));
        ControlTimeout = seconds == 0 ? Timeout.InfiniteTimeSpan : TimeSpan.FromSeconds(seconds);
        return [.. args[..at], .. args[(at + 2)..]];
    }

    private static int PrintVersion()
    {
        Console.WriteLine("ublk-aot " + Version);
        return 0;
    }

    private static int Features(string[] args)
    {
        bool json = Array.IndexOf(args, "--json") >= 0; // anything else was refused by CommandTable.Check
        using var ctrl = OpenControl();
        ulong f = ctrl.Features;
        if (json)
        {
            using var w = NewJsonWriter();
            w.WriteStartObject();
            w.WriteString("features", "0x" + f.ToString("x", CultureInfo.InvariantCulture));
            w.WriteNumber("value", f);
            w.WriteStartArray("names");
            foreach (string n in FeatureNames(f)) w.WriteStringValue(n);
            w.WriteEndArray();
            w.WriteEndObject();
            w.Flush();
            Console.WriteLine();
        }
        else
        {
            Console.WriteLine("ublk features: 0x" + f.ToString("x", CultureInfo.InvariantCulture));
            foreach (string n in FeatureNames(f)) Console.WriteLine("  UBLK_F_" + n);
        }
        return 0;
    }

    public static List<string> FeatureNames(ulong f)
    {
        var names = new List<string>();
        for (int bit = 0; bit < 64; bit++)
        {
            if ((f & (1UL << bit)) == 0) continue;
            names.Add(bit < UblkConst.FeatureNames.Length ? UblkConst.FeatureNames[bit] : "BIT" + bit.ToString(CultureInfo.InvariantCulture));
        }
        return names;
    }

    internal static Utf8JsonWriter NewJsonWriter()
        => new(Console.OpenStandardOutput(), new JsonWriterOptions { Indented = false });

    private static int ListDevices(string[] args)
    {
        bool json = Array.IndexOf(args, "--json") >= 0; // anything else was refused by CommandTable.Check
        using var ctrl = OpenControl();
        uint[] ids = UblkControl.ListDeviceIds();
        Utf8JsonWriter? w = null;
        if (json) { w = NewJsonWriter(); w.WriteStartArray(); }
        else Console.WriteLine("ID   STATE     QUEUES DEPTH  SIZE          PID      SERVER RECOVERY BLOCK");
        foreach (uint id in ids)
        {
            if (ctrl.TryGetDevInfo(id, out ublksrv_ctrl_dev_info info) < 0) continue;
            ulong size = 0;
            try { size = ctrl.GetParams(id).basic.dev_sectors << 9; } catch (UblkException) { }
            string state = UblkConst.StateName(info.state);
            string block = File.Exists("/dev/ublkb" + id) ? "/dev/ublkb" + id : "-";
            bool alive = ServerAlive(info);
            string recovery = RecoveryOf(info);
            if (w != null)
            {
                w.WriteStartObject();
                w.WriteNumber("id", id);
                w.WriteString("state", state);
                w.WriteNumber("queues", info.nr_hw_queues);
                w.WriteNumber("depth", info.queue_depth);
                w.WriteNumber("size", size);
                w.WriteNumber("max_io", info.max_io_buf_bytes);
                w.WriteNumber("pid", info.ublksrv_pid);
                w.WriteString("flags", "0x" + info.flags.ToString("x", CultureInfo.InvariantCulture));
                w.WriteString("block", block);
                w.WriteBoolean("server_alive", alive);
                w.WriteString("recovery", recovery);
                w.WriteBoolean("waits_for_recovery", UblkDevice.WaitsForRecovery(info));
                if (StateFile.Exists(id)) w.WriteString("state_file", StateFile.PathOf(id));
                else w.WriteNull("state_file");
                w.WriteEndObject();
            }
            else
            {
                Console.WriteLine(string.Format(CultureInfo.InvariantCulture, "{0,-4} {1,-9} {2,6} {3,5}  {4,-13} {5,-8} {6,-6} {7,-8} {8}",
                    id, state, info.nr_hw_queues, info.queue_depth, Sizes.Format(size), info.ublksrv_pid, alive ? "alive" : "gone",
                    recovery, block));
            }
        }
        if (w != null) { w.WriteEndArray(); w.Flush(); w.Dispose(); Console.WriteLine(); }
        return 0;
    }

    /// <summary>The device's server process exists (the kernel's pid; 6.12 keeps a dead server's pid, so ask the process table).</summary>
    internal static bool ServerAlive(in ublksrv_ctrl_dev_info info)
        => info.ublksrv_pid > 0 && (Libc.Kill(info.ublksrv_pid, 0) == 0 || Errno.Last == Errno.EPERM);

    /// <summary>"reissue", "fail-io", "recovery" (USER_RECOVERY alone) or "off", from the device's flags.</summary>
    internal static string RecoveryOf(in ublksrv_ctrl_dev_info info)
    {
        if ((info.flags & UblkConst.UBLK_F_USER_RECOVERY) == 0) return "off";
        if ((info.flags & UblkConst.UBLK_F_USER_RECOVERY_FAIL_IO) != 0) return "fail-io";
        return (info.flags & UblkConst.UBLK_F_USER_RECOVERY_REISSUE) != 0 ? "reissue" : "recovery";
    }

    private static int Delete(string[] args)
    {
        if (Array.IndexOf(args, "--safe") >= 0) return SafeDelete(args);
        if (args.Length != 1) throw new UsageException("del: expected one device id, --all or --dead");
        // Every malformed argument is refused before the control device is opened.
        uint one = args[0] is "--all" or "--dead" ? 0 : ParseId("del", args[0]);
        using var ctrl = OpenControl();
        uint[] ids;
        if (args[0] == "--all") ids = UblkControl.ListDeviceIds();
        else if (args[0] == "--dead")
        {
            var dead = new List<uint>();
            foreach (uint d in UblkControl.ListDeviceIds())
                if (ctrl.TryGetDevInfo(d, out ublksrv_ctrl_dev_info di) == 0 && (di.state != UblkConst.UBLK_S_DEV_LIVE || !ServerAlive(di))) dead.Add(d);
            ids = dead.ToArray();
        }
        else
        {
            if (ctrl.TryGetDevInfo(one, out _) < 0) throw new UsageException("del: no ublk device " + one);
            ids = [one];
        }

        int failed = 0;
        foreach (uint id in ids)
        {
            // STOP_DEV removes the disk (a live server sees its device die and exits, releasing /dev/ublkcN);
            // DEL_DEV_ASYNC then frees the id once the last user is gone, without blocking on that user.
            ctrl.StopDev(id);
            if (!DeleteStopped(ctrl, id)) failed++;
        }
        return failed == 0 ? 0 : 1;
    }

    /// <summary>DEL_DEV_ASYNC of a stopped device, its state file, and the wait for its id to go; false if the kernel refused.</summary>
    internal static bool DeleteStopped(UblkControl ctrl, uint id)
    {
        int rc = ctrl.DelDev(id, async: true);
        if (rc < 0 && rc != -Errno.ENODEV && rc != -Errno.ENOENT)
        {
            Console.Error.WriteLine("ublk-aot: del " + id + ": " + Errno.Name(rc));
            return false;
        }
        StateFile.Delete(id);
        if (!WaitGone(id, 10_000))
            Console.Error.WriteLine("ublk-aot: del " + id + ": deletion pending (a process still holds /dev/ublkc" + id + " or /dev/ublkb" + id + ")");
        return true;
    }

    /// <summary>How long `del --safe` retries on EBUSY before it reports the holders: udev probes a disk after every close of a writable fd.</summary>
    private const int TransientOpenerMs = 3000;

    /// <summary>
    /// del --safe ID: TRY_STOP_DEV, which stops the device only if nothing has /dev/ublkbN open (a process, a mount);
    /// then as `del`. In use: one line naming the holders, exit 1, the device untouched and still served.
    /// </summary>
    private static int SafeDelete(string[] args)
    {
        string[] rest = Array.FindAll(args, a => a != "--safe");
        if (args.Length != 2 || rest.Length != 1) throw new UsageException("del --safe: expected one device id");
        uint id = ParseId("del --safe", rest[0]);
        using var ctrl = OpenControl();
        if (ctrl.TryGetDevInfo(id, out ublksrv_ctrl_dev_info info) < 0) throw new UsageException("del: no ublk device " + id);
        if ((info.flags & UblkConst.UBLK_F_SAFE_STOP_DEV) == 0)
            throw new UsageException("del --safe: " + LacksFeature(ctrl, id, UblkConst.UBLK_F_SAFE_STOP_DEV, "cannot be stopped safely"));
        long until = Environment.TickCount64 + TransientOpenerMs;
        while (true)
        {
            int rc = ctrl.TryStopDev(id);
            // ENODEV: the device has no disk (its server died): nothing can hold it open.
            if (rc == 0 || rc == -Errno.ENODEV) break;
            if (rc != -Errno.EBUSY) throw new UblkException("TRY_STOP_DEV on ublk device " + id + " failed: " + Errno.Name(rc), rc);
            if (Environment.TickCount64 < until) { Thread.Sleep(100); continue; }
            List<string> holders = Holders(id);
            throw new UblkException("ublk device " + id + " is in use: /dev/ublkb" + id + " is " +
                    (holders.Count > 0 ? string.Join(", ", holders) : "open (no holder found in /proc)") + "; nothing was changed", Errno.EBUSY);
        }
        return DeleteStopped(ctrl, id) ? 0 : 1;
    }

    /// <summary>
    /// Who holds /dev/ublkbID (or one of its partitions) open: mounts (/proc/self/mountinfo), stacked devices
    /// (/sys/block/ublkbID/holders) and processes (/proc/PID/fd links). Best effort; "mounted on /mnt/x", "held by 123 (sleep)".
    /// </summary>
    internal static List<string> Holders(uint id)
    {
        string name = "ublkb" + id.ToString(CultureInfo.InvariantCulture);
        string dev = "/dev/" + name;
        bool Ours(string path) => path == dev || (path.StartsWith(dev + "p", StringComparison.Ordinal) && path.Length > dev.Length + 1 && char.IsDigit(path[dev.Length + 1]));
        string Via(string path) => path == dev ? "" : " (through " + path + ")";
        var found = new List<string>();
        try
        {
            foreach (string line in File.ReadAllLines("/proc/self/mountinfo"))
            {
                // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
                string[] f = line.Split(' ');
                int dash = Array.IndexOf(f, "-");
                if (f.Length < 5 || dash < 0 || dash + 2 >= f.Length || !Ours(f[dash + 2])) continue;
                found.Add("mounted on " + f[4].Replace("\040", " ") + Via(f[dash + 2]));
            }
        }
        catch (IOException) { }
        try
        {
            foreach (string h in Directory.GetFileSystemEntries("/sys/block/" + name + "/holders"))
                found.Add("held by " + Path.GetFileName(h));
        }
        catch (IOException) { }
        int self = Environment.ProcessId;
        string[] procs;
        try { procs = Directory.GetDirectories("/proc"); }
        catch (IOException) { procs = []; }
        foreach (string p in procs)
        {
            if (!int.TryParse(Path.GetFileName(p), NumberStyles.None, CultureInfo.InvariantCulture, out int pid) || pid == self) continue;
            string[] fds;
            try { fds = Directory.GetFileSystemEntries(p + "/fd"); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { continue; }
            foreach (string fd in fds)
            {
                string? target = Libc.ReadLinkText(fd);
                if (target == null || !Ours(target)) continue;
                string comm;
                try { comm = File.ReadAllText(p + "/comm").Trim(); }
                catch (IOException) { comm = "?"; }
                found.Add("held by " + pid + " (" + comm + ")" + Via(target));
                break;
            }
        }
        return found;
    }

    /// <summary>
    /// Why device <paramref name="id"/> lacks <paramref name="flag"/>: the kernel has no such feature (naming it and the
    /// release), or the device was made without it.
    /// </summary>
    internal static string LacksFeature(UblkControl ctrl, uint id, ulong flag, string what)
    {
        string feature = UblkDevice.MissingFeatures(0, flag);
        if ((ctrl.Features & flag) == 0)
            return "ublk device " + id + " " + what + ": that needs " + feature + UblkDevice.NotInKernel(ctrl.Features);
        return "ublk device " + id + " " + what + ": it was created without " + feature + " (by a server that did not ask for it)";
    }

    /// <summary>
    /// resize ID SIZE: asks device ID's server, over its control socket, to change the size (the server owns the
    /// backend). The argument checks come before anything is opened.
    /// </summary>
    private static int Resize(string[] args)
    {
        if (args.Length != 2) throw new UsageException("resize: expected a device id and a size, e.g. resize 0 2G");
        uint id = ParseId("resize", args[0]);
        if (!Sizes.TryParse(args[1], out ulong bytes)) throw new UsageException("resize: " + Sizes.Invalid(args[1], "size"));
        if (bytes == 0 || bytes % 512 != 0 || bytes > (ulong.MaxValue >> 9) << 9)
            throw new UsageException("resize: the size must be a positive multiple of 512 bytes, got " + bytes);
        using (var ctrl = OpenControl())
        {
            if (ctrl.TryGetDevInfo(id, out ublksrv_ctrl_dev_info info) < 0) throw new UsageException("resize: no ublk device " + id);
            if ((info.flags & UblkConst.UBLK_F_UPDATE_SIZE) == 0)
                throw new UsageException("resize: " + LacksFeature(ctrl, id, UblkConst.UBLK_F_UPDATE_SIZE, "cannot be resized"));
        }
        // The server's work is a control command or two and an ftruncate: the control deadline, plus a margin.
        TimeSpan wait = ControlTimeout == Timeout.InfiniteTimeSpan ? Timeout.InfiniteTimeSpan : ControlTimeout * 2 + TimeSpan.FromSeconds(5);
        string reply = ControlSocket.Request(id, "resize " + bytes.ToString(CultureInfo.InvariantCulture), wait);
        if (reply.StartsWith("ok", StringComparison.Ordinal))
        {
            Console.WriteLine("/dev/ublkb" + id + ": " + bytes + " bytes (" + Sizes.Format(bytes) + ")");
            return 0;
        }
        if (reply.StartsWith("refused ", StringComparison.Ordinal)) throw new UsageException("resize: " + reply["refused ".Length..]);
        throw new UblkException("resize: " + (reply.StartsWith("error ", StringComparison.Ordinal) ? reply["error ".Length..] : "unexpected reply '" + reply + "'"));
    }

    /// <summary>
    /// stats ID [--json]: asks device ID's server, over its control socket, for its live counters and prints them as a
    /// table, or as the server's one-line JSON (field names: README, StatsReport.Json). Arguments are checked first.
    /// </summary>
    private static int Stats(string[] args)
    {
        string[] ids = Array.FindAll(args, a => a != "--json");
        if (ids.Length != 1) throw new UsageException("stats: expected one device id (and optionally --json), e.g. stats 0 --json");
        if (ids[0].StartsWith('-')) throw new UsageException("stats: unexpected argument '" + ids[0] + "'");
        uint id = ParseId("stats", ids[0]);
        bool json = args.Length != ids.Length;
        TimeSpan wait = ControlTimeout == Timeout.InfiniteTimeSpan ? Timeout.InfiniteTimeSpan : ControlTimeout + TimeSpan.FromSeconds(5);
        string reply = ControlSocket.Request(id, "stats", wait, maxReply: 1 << 20);
        if (reply.StartsWith("refused ", StringComparison.Ordinal)) throw new UsageException("stats: " + reply["refused ".Length..]);
        if (!reply.StartsWith("ok ", StringComparison.Ordinal))
            throw new UblkException("stats: " + (reply.StartsWith("error ", StringComparison.Ordinal) ? reply["error ".Length..] : "unexpected reply '" + reply + "'"));
        string body = reply["ok ".Length..];
        if (json)
        {
            Console.WriteLine(body);
            return 0;
        }
        try
        {
            using JsonDocument doc = JsonDocument.Parse(body);
            StatsReport.PrintTable(doc.RootElement, Console.Out);
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw new UblkException("stats: the server of ublk device " + id + " sent what this ublk-aot cannot read (" + e.Message + ")");
        }
        return 0;
    }

    internal static bool WaitGone(uint id, int timeoutMs)
    {
        for (int waited = 0; waited < timeoutMs; waited += 20)
        {
            if (!UblkControl.DeviceExists(id)) return true;
            Thread.Sleep(20);
        }
        return !UblkControl.DeviceExists(id);
    }
}
