using System;
using System.Collections.Generic;
using System.IO;
using Ublk.Aot.Interop;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Cli;

/// <summary>
/// ublk-aot install [--prefix DIR] [--force]: puts the service files this binary carries (dist/, embedded at build
/// time) and a copy of the binary itself in place under DIR (default /):
/// <code>
///   usr/local/sbin/ublk-aot                 this binary (a local install: /usr/local is not the package manager's)
///   etc/systemd/system/ublk-aot@.service    the template unit (/etc: the admin's units, not a package's /usr/lib)
///   etc/udev/rules.d/60-ublk-aot.rules      nowatch for ublk disks, /dev/disk/by-ublk/NAME
///   etc/modprobe.d/ublk-aot.conf            ublk_drv's options (commented)
///   etc/modules-load.d/ublk-aot.conf        ublk_drv loaded at boot
///   etc/ublk-aot/ublk-aot.conf.example      a device config to copy to etc/ublk-aot/NAME.conf
///   usr/local/share/man/man1/ublk-aot.1     the man page, generated from the command table (= dist/ublk-aot.1)
///   usr/local/share/bash-completion/completions/ublk-aot   the bash completion (= dist/ublk-aot.bash)
/// </code>
/// Idempotent: a file equal to ours is left alone ("unchanged"). A service file that differs (edited by the admin,
/// or from another version) is refused before anything is written, unless --force; the binary is always replaced
/// (a newer or older ublk-aot). Files are written atomically (a temporary file, then rename), so a running server
/// keeps its old executable and udev never reads half a rule. Nothing is started or reloaded: DIR may be an image.
/// </summary>
public static class Install
{
    public const string BinaryPath = "usr/local/sbin/ublk-aot";

    /// <summary>
    /// A file to install: an embedded one (its LogicalName in Ublk.Aot.csproj) or, for the man page and the completion,
    /// the text this binary generates from its command table; where it goes under the prefix, its mode.
    /// </summary>
    private readonly record struct Item(string Resource, string Path, uint Mode, Func<string>? Generate = null)
    {
        public byte[] Bytes() => Generate is { } g ? System.Text.Encoding.UTF8.GetBytes(g()) : Content(Resource);
    }

    private const uint Rw_r__r__ = 0x1a4; // 0644
    private const uint Rwxr_xr_x = 0x1ed; // 0755

    private static readonly Item[] Items =
    [
        new("dist/ublk-aot@.service", "etc/systemd/system/ublk-aot@.service", Rw_r__r__),
        new("dist/60-ublk-aot.rules", "etc/udev/rules.d/60-ublk-aot.rules", Rw_r__r__),
        new("dist/modprobe.d/ublk-aot.conf", "etc/modprobe.d/ublk-aot.conf", Rw_r__r__),
        new("dist/modules-load.d/ublk-aot.conf", "etc/modules-load.d/ublk-aot.conf", Rw_r__r__),
        new("dist/ublk-aot.conf.example", "etc/ublk-aot/ublk-aot.conf.example", Rw_r__r__),
        // bash-completion looks in $XDG_DATA_DIRS/bash-completion/completions, /usr/local/share first by default.
        new("man page", "usr/local/share/man/man1/ublk-aot.1", Rw_r__r__, CommandTable.Man),
        new("bash completion", "usr/local/share/bash-completion/completions/ublk-aot", Rw_r__r__, CommandTable.BashCompletion),
    ];

    /// <summary>The text of one embedded service file (the tests and `install` read the same bytes).</summary>
    public static byte[] Content(string resource)
    {
        using Stream s = typeof(Install).Assembly.GetManifestResourceStream(resource)
            ?? throw new UblkException("this ublk-aot was built without its service file " + resource, Errno.ENOENT);
        var m = new MemoryStream();
        s.CopyTo(m);
        return m.ToArray();
    }

    public static int Run(string[] argv)
    {
        string prefix = "/";
        bool force = false;
        for (int i = 0; i < argv.Length; i++)
        {
            switch (argv[i])
            {
                case "--prefix":
                    if (i + 1 >= argv.Length || argv[i + 1].Length == 0) throw new UsageException("install: --prefix needs a directory");
                    prefix = Path.GetFullPath(argv[++i]);
                    break;
                case "--force": force = true; break;
                default: throw new UsageException("install: unexpected argument '" + argv[i] + "'");
            }
        }
        if (!Directory.Exists(prefix)) throw new UsageException("install: --prefix " + prefix + ": no such directory");

        string self = Environment.ProcessPath ?? "/proc/self/exe";
        var plan = new List<(string Path, byte[] Bytes, uint Mode, bool Always)>();
        plan.Add((Path.Combine(prefix, BinaryPath), File.ReadAllBytes(self), Rwxr_xr_x, true));
        foreach (Item it in Items) plan.Add((Path.Combine(prefix, it.Path), it.Bytes(), it.Mode, false));

        // Each file's state, read once: missing, equal to ours, or different. Every conflict is found before anything
        // is written: a refused install changes nothing.
        var state = new Have[plan.Count];
        var changed = new List<string>();
        for (int k = 0; k < plan.Count; k++)
        {
            state[k] = !File.Exists(plan[k].Path) ? Have.Missing : Same(plan[k].Path, plan[k].Bytes) ? Have.Equal : Have.Different;
            if (state[k] == Have.Different && !plan[k].Always) changed.Add(plan[k].Path);
        }
        if (changed.Count > 0 && !force)
            throw new UsageException("install: " + string.Join(", ", changed) + (changed.Count == 1 ? " differs" : " differ") +
                " from this ublk-aot's copy (changed locally, or another version); nothing was written; --force replaces " + (changed.Count == 1 ? "it" : "them") +
                " (for local changes, a drop-in such as /etc/systemd/system/ublk-aot@.service.d/*.conf survives installs)");

        for (int k = 0; k < plan.Count; k++)
        {
            var p = plan[k];
            if (state[k] == Have.Equal) { Console.WriteLine("unchanged " + p.Path); continue; }
            Write(p.Path, p.Bytes, p.Mode);
            Console.WriteLine((state[k] == Have.Missing ? "installed" : "replaced ") + " " + p.Path);
        }
        if (prefix == "/")
            Console.Error.WriteLine("ublk-aot: next: systemctl daemon-reload; udevadm control --reload; modprobe ublk_drv; " +
                "cp /etc/ublk-aot/ublk-aot.conf.example /etc/ublk-aot/NAME.conf (edit it); systemctl enable --now ublk-aot@NAME");
        return 0;
    }

    private enum Have { Missing, Equal, Different }

    private static bool Same(string path, byte[] bytes)
    {
        var info = new FileInfo(path);
        if (info.Length != bytes.Length) return false;
        return File.ReadAllBytes(path).AsSpan().SequenceEqual(bytes);
    }

    private static void Write(string path, byte[] bytes, uint mode)
    {
        try { AtomicFile.Write(path, bytes, mode); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UblkException("install: cannot write " + path + ": " + e.Message, Errno.EIO);
        }
    }

    /// <summary>
    /// ublk-aot udev-name ublkbN | ublkbNpM (not in the usage: the udev rule's helper): prints UBLK_AOT_NAME=NAME for
    /// IMPORT{program} when device N was started from a config NAME.conf (its name file in /run/ublk-aot), nothing
    /// otherwise; exit 0 either way, 2 for a malformed kernel name.
    /// </summary>
    public static int UdevName(string[] argv)
    {
        if (argv.Length != 1 || !ParseKernelName(argv[0], out uint id))
            throw new UsageException("udev-name: expected a ublk disk's kernel name, e.g. ublkb3 or ublkb3p1, got '" + string.Join(" ", argv) + "'");
        if (StateFile.ReadName(id) is { } name) Console.WriteLine("UBLK_AOT_NAME=" + name);
        return 0;
    }

    /// <summary>"ublkb3" or "ublkb3p1" → 3.</summary>
    internal static bool ParseKernelName(string k, out uint id)
    {
        id = 0;
        const string disk = "ublkb";
        if (!k.StartsWith(disk, StringComparison.Ordinal)) return false;
        string rest = k[disk.Length..];
        int p = rest.IndexOf('p');
        string num = p < 0 ? rest : rest[..p];
        if (p >= 0 && (p + 1 >= rest.Length || !AllDigits(rest[(p + 1)..]))) return false;
        return AllDigits(num) && num.Length <= 9 && uint.TryParse(num, out id);
    }

    private static bool AllDigits(string s)
    {
        if (s.Length == 0) return false;
        foreach (char c in s) if (!char.IsAsciiDigit(c)) return false;
        return true;
    }
}
