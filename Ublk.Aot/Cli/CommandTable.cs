using System;
using System.Collections.Generic;
using System.Text;
using Ublk.Aot.Backends;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Cli;

/// <summary>What a command's positional words are, for completion (and the man page's wording).</summary>
public enum Positional
{
    None,
    /// <summary>A ublk device id: completed from /sys/class/ublk-char.</summary>
    DeviceId,
    /// <summary>A command name (`help COMMAND`).</summary>
    Command,
}

/// <summary>One option of a command: its name, the placeholder of its value (null: a flag), its help.</summary>
public sealed class Opt(string name, string? arg, string help)
{
    public string Name { get; } = name;
    /// <summary>Placeholder of the value ("N", "SPEC"); null for a flag.</summary>
    public string? Arg { get; } = arg;
    public string Help { get; } = help;
    /// <summary>The values it takes, when they are a fixed set (completed by bash).</summary>
    public string[] Values { get; init; } = [];
    /// <summary>Its value is a path (bash completes file names).</summary>
    public bool File { get; init; }
    /// <summary>May be given more than once.</summary>
    public bool Repeatable { get; init; }
    /// <summary>Left out of --help, the man page and completion (a mode of `help` that generates files).</summary>
    public bool Hidden { get; init; }
    public string Usage => Arg == null ? Name : Name + " " + Arg;
}

/// <summary>One command: synopsis (after "ublk-aot "), a one-line summary, one paragraph, its options.</summary>
public sealed class Command(string name, string synopsis, string summary, string description, Opt[] options)
{
    public string Name { get; } = name;
    public string Synopsis { get; } = synopsis;
    public string Summary { get; } = summary;
    public string Description { get; } = description;
    public Opt[] Options { get; } = options;
    public Positional Positional { get; init; }
    /// <summary>Positional words it takes at most (-1: any).</summary>
    public int MaxPositional { get; init; }
    /// <summary>Left out of the usage, the man page and completion: a helper other programs run (udev-name, for udev).</summary>
    public bool Hidden { get; init; }
    /// <summary>Field names of its --json output, for the man page (stable: scripts read them).</summary>
    public string[] JsonFields { get; init; } = [];
    public string JsonShape { get; init; } = "";

    public Opt? Find(string option)
    {
        foreach (Opt o in Options) if (o.Name == option) return o;
        return null;
    }
}

/// <summary>
/// Every command of ublk-aot, one entry each, with its options. Generated from it: the top-level usage, each
/// command's --help, the man page ublk-aot.1 (dist/), the bash completion (dist/) and the checks every command's
/// arguments pass before anything is opened (unknown, duplicated or value-less options are usage errors, exit 2).
/// Adding an option is one row here and one case in the command's parser.
/// </summary>
public static class CommandTable
{
    public const string Program = "ublk-aot";

    /// <summary>The man page's date: bump it with the page's content (the page is compared with dist/ by a test).</summary>
    public const string ManDate = "2026-12-04";

    public static readonly Opt Timeout = new("--timeout", "SECONDS",
        "the deadline of each control command this process sends (30; 0 = none): one that does not complete in time fails " +
        "with a line naming it, its device and the kernel; every command takes it, before or after the command word");
    public static readonly Opt HelpOpt = new("--help", null, "print this command's help and exit 0 (also -h)");

    /// <summary>serve's options; recover takes them too (with --backend).</summary>
    public static readonly Opt[] ServeOptions =
    [
        new("--backend", "SPEC", "what the device stores, see BACKENDS (required unless --config gives it)"),
        new("--config", "FILE", "read the backend spec and serve options from FILE (KEY=VALUE lines, see ublk-aot.conf in the README)")
            { File = true },
        new("--queues", "N", "hardware queues, one thread each (1; the kernel clamps it to the number of CPUs)"),
        new("--depth", "N", "requests in flight per queue (" + DeviceOptions.DefaultDepth + ", at most 4096)"),
        new("--block-size", "512|4096", "logical block size in bytes (512)") { Values = ["512", "4096"] },
        new("--max-io", "BYTES", "largest request in bytes, a multiple of 4096 (512K)"),
        new("--read-only", null, "the disk is read-only"),
        new("--id", "N", "use device id N; a device N whose server died and that waits for recovery is recovered instead of created"),
        new("--cpus", "LIST", "pin the queue threads to these CPUs, e.g. 0,2-3 (default: queue i on online CPU i mod n)"),
        new("--idle-release", "SECONDS", "a queue idle this long gives its buffers' pages back (20; 0 = never)"),
        new("--poll", "USECS", "a queue thread polls its ring this long before it sleeps waiting for a completion: lower latency " +
            "for a network backend at low queue depth, at the price of a busy CPU (0 = sleep at once; at most 10000)"),
        new("--fixed-buffers", null, "register the buffers with io_uring for file I/O (pins depth x max-io bytes per queue; turns idle release off)"),
        new("--huge-buffers", null, "put the buffers on transparent huge pages"),
        new("--recovery", "reissue|fail-io|off", "the device outlives this server's death and waits for `recover`: reissue: I/O waits and requests " +
            "in flight are re-issued; fail-io: I/O fails meanwhile (off)") { Values = ["reissue", "fail-io", "off"] },
        new("--no-partition-scan", null, "the kernel does not scan the new disk for partitions (UBLK_F_NO_AUTO_PART_SCAN, 7.0+)"),
        new("--io-mode", "MODE", "how request data moves: " + string.Join("|", IoModes.Names) + " (auto: the fastest this kernel " +
            "and backend allow; see the README)") { Values = IoModes.Names },
        new("--metrics", "unix:PATH|ADDR:PORT", "serve the live counters in the Prometheus text format over HTTP at /metrics, on a unix " +
            "socket or an IP literal and port (127.0.0.1:9101, [::1]:9101); bound before the device is made"),
        new("--stats", null, "at exit, print each queue's counters and allocated bytes on stderr"),
    ];

    public static readonly Command[] Commands =
    [
        new("serve", "serve --backend SPEC [OPTIONS]", "create a ublk disk and serve it",
            "Creates /dev/ublkbN, prints its path on stdout once it is live and serves it from this process until SIGINT or " +
            "SIGTERM, or until the device is deleted from outside (`del`), then removes it and exits 0. A line on stderr " +
            "describes the device. The server runs in a private mount namespace of its own: a filesystem mounted on its " +
            "disk in the caller's namespace is never the server's to unmount, so its exit cannot wait on its own disk.",
            ServeOptions),
        new("recover", "recover ID [--backend SPEC [OPTIONS]] [--stats]", "serve again a device whose server died",
            "Serves device ID again after its server died (the device was made with --recovery and waits, QUIESCED or " +
            "FAIL_IO). Without --backend, the SPEC and the options come from the device's state file in /run/ublk-aot; " +
            "with it, the serve options given are used.",
            ServeOptions) { Positional = Positional.DeviceId, MaxPositional = 1 },
        new("upgrade", "upgrade ID [--binary PATH] [--stats]", "hand a live device to a new server without a failed request",
            "Hands device ID from its live server to a new one (this binary or PATH) without a failed request: QUIESCE_DEV " +
            "where the kernel has it, else the server commits what it holds and leaves (SIGUSR1) and the kernel re-issues " +
            "the rest. The old server exits 0 and this process becomes the new server (it executes PATH recover ID). The " +
            "device must have been made with --recovery reissue.",
            [
                new("--binary", "PATH", "the new server's executable (default: this one); it must answer --version") { File = true },
                new("--stats", null, "passed to the new server"),
            ]) { Positional = Positional.DeviceId, MaxPositional = 1 },
        new("resize", "resize ID SIZE", "change a live device's size",
            "Changes device ID's size while it serves (UPDATE_SIZE, 7.x), through its server's control socket: a file " +
            "backend's file grows with it; a shrink is refused while the file holds data beyond SIZE; mem: cannot be resized.",
            []) { Positional = Positional.DeviceId, MaxPositional = 2 },
        new("stats", "stats ID [--json]", "live counters of a running server",
            "Live counters of device ID's running server: per queue requests, bytes, errors, in flight, latency " +
            "percentiles, io mode, recovery state.",
            [new("--json", null, "one JSON object (fields under JSON OUTPUT)")])
        {
            Positional = Positional.DeviceId,
            MaxPositional = 1,
            JsonShape = "one object",
            JsonFields = ["device", "state", "io_mode", "recovery", "latency_timing", "pid", "latency_bounds_us", "total",
                "queues (queue, cpu, reads, writes, flushes, discards, write_zeroes, other, errors, bytes_read, bytes_written, " +
                "in_flight, latency_us, latency_buckets)"],
        },
        new("list", "list [--json]", "the kernel's ublk devices",
            "Lists the kernel's ublk devices: id, state, queues, depth, size, the server's pid and whether it is alive, " +
            "the recovery mode and the block device.",
            [new("--json", null, "one JSON array, an object per device (fields under JSON OUTPUT)")])
        {
            JsonShape = "an array with one object per device",
            JsonFields = ["id", "state", "queues", "depth", "size", "max_io", "pid", "flags", "block", "server_alive", "recovery",
                "waits_for_recovery", "state_file"],
        },
        new("del", "del ID | --all | --dead | --safe ID", "stop and remove ublk devices",
            "Stops and removes ublk device ID, or all of them (--all), or those whose server is gone (--dead). A live " +
            "server sees its device go and exits 0. With --safe, nothing is changed while /dev/ublkbID is open or mounted: " +
            "exit 1 and a line naming who holds it (TRY_STOP_DEV, 7.x).",
            [
                new("--all", null, "every ublk device"),
                new("--dead", null, "the devices whose server is gone"),
                new("--safe", null, "refuse, exit 1, while the device is open or mounted (needs UBLK_F_SAFE_STOP_DEV)"),
            ]) { Positional = Positional.DeviceId, MaxPositional = 1 },
        new("features", "features [--json]", "the ublk features of the running kernel",
            "Prints the ublk features of the running kernel (GET_FEATURES): the mask and the UBLK_F_ name of each bit.",
            [new("--json", null, "one JSON object (fields under JSON OUTPUT)")])
        {
            JsonShape = "one object",
            JsonFields = ["features", "value", "names"],
        },
        new("install", "install [--prefix DIR] [--force]", "install the binary, the service files, the man page and the completion",
            "Puts a copy of this binary (usr/local/sbin), the systemd unit ublk-aot@.service, the udev rule, the " +
            "modprobe.d and modules-load.d files, an example config (etc/ublk-aot), the man page and the bash completion " +
            "under DIR (default /). A file equal to ours is left alone; one that differs is refused, exit 2, before " +
            "anything is written, unless --force. Nothing is started or reloaded.",
            [
                new("--prefix", "DIR", "the root to install under (default /)") { File = true },
                new("--force", null, "replace files that differ from this build's"),
            ]),
        new("udev-name", "udev-name KERNEL-NAME", "the device's name, for the udev rule",
            "Prints UBLK_AOT_NAME=NAME for a ublk disk (ublkb3, ublkb3p1) whose server was started from a config " +
            "(/run/ublk-aot/ID.name); the udev rule turns it into /dev/disk/by-ublk/NAME.",
            []) { MaxPositional = 1, Hidden = true },
        new("help", "help [COMMAND]", "print the usage, or a command's help",
            "Prints the usage, or COMMAND's help (the same as COMMAND --help), on stdout and exits 0. --man prints the " +
            "man page ublk-aot.1 (roff) and --bash-completion the bash completion script, both generated from the " +
            "table --help is made from (the copies in dist/ are these).",
            [
                new("--man", null, "print the man page (roff)"),
                new("--bash-completion", null, "print the bash completion script"),
            ]) { Positional = Positional.Command, MaxPositional = 1 },
    ];

    public static Command? Find(string name)
    {
        foreach (Command c in Commands) if (c.Name == name) return c;
        return null;
    }

    private const string ExitStatus = "exit status: 0 ok, 1 runtime failure, 2 usage or environment error (bad arguments, no ublk_drv, not root)";

    // ------------------------------------------------------------------ argument checks

    /// <summary>
    /// The checks every command's arguments pass before its parser runs and before anything is opened: an option the
    /// command does not have, one given twice, one without its value, too many words. A word
    /// that looks like a negative number is a positional word (its command says why it is not an id).
    /// Returns true when --help / -h was asked for (the caller prints the help).
    /// </summary>
    public static bool Check(Command c, string[] args)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        int positional = 0;
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            if (a is "--help" or "-h") return true;
            if (a.Length > 1 && a[0] == '-' && !(a.Length > 1 && char.IsAsciiDigit(a[1])))
            {
                Opt o = c.Find(a) ?? throw new UsageException(c.Name + ": unknown option '" + a + "' (" + Program + " " + c.Name + " --help)");
                if (!o.Repeatable && !seen.Add(a)) throw new UsageException(c.Name + ": " + a + " given twice");
                if (o.Arg != null)
                {
                    if (i + 1 >= args.Length) throw new UsageException(c.Name + ": " + a + " needs a value (" + o.Arg + ")");
                    i++;
                }
                continue;
            }
            positional++;
            if (c.MaxPositional >= 0 && positional > c.MaxPositional)
                throw new UsageException(c.Name + ": unexpected argument '" + a + "' (" + Program + " " + c.Synopsis + ")");
        }
        return false;
    }

    // ------------------------------------------------------------------ --help

    /// <summary>`ublk-aot`, `ublk-aot --help`: every command's synopsis and summary, SPEC, the exit status.</summary>
    public static string Usage()
    {
        var sb = new StringBuilder();
        sb.Append("usage: ").Append(Program).Append(" COMMAND [OPTIONS]   (").Append(Program).Append(" COMMAND --help for a command's options)\n\n");
        foreach (Command c in Commands)
        {
            if (c.Hidden) continue;
            sb.Append("  ").Append(c.Synopsis).Append('\n');
            sb.Append("        ").Append(c.Summary).Append('\n');
        }
        sb.Append("  --version\n        print the version\n\n");
        sb.Append("every command takes ").Append(Timeout.Usage).Append(": the deadline of each control command (30; 0 = none)\n\n");
        sb.Append("SPEC (serve --backend), one of:\n").Append(BackendTable.Help("  ")).Append("\n\n");
        sb.Append("sizes take K/M/G/T suffixes (powers of 1024)\n\n");
        sb.Append(ExitStatus).Append('\n');
        return sb.ToString();
    }

    /// <summary>`ublk-aot COMMAND --help`, `ublk-aot help COMMAND`.</summary>
    public static string Help(Command c)
    {
        var sb = new StringBuilder();
        sb.Append("usage: ").Append(Program).Append(' ').Append(c.Synopsis).Append("\n\n");
        Wrap(sb, c.Description, "", 100);
        int width = 0;
        foreach (Opt o in c.Options) if (!o.Hidden) width = Math.Max(width, o.Usage.Length);
        width = Math.Max(width, Timeout.Usage.Length);
        sb.Append("\noptions:\n");
        foreach (Opt o in c.Options)
        {
            if (o.Hidden) continue;
            AppendOption(sb, o, width);
        }
        AppendOption(sb, Timeout, width);
        AppendOption(sb, HelpOpt, width);
        if (c.Options == ServeOptions)
            sb.Append("\nSPEC, one of:\n").Append(BackendTable.Help("  ")).Append("\n\nsizes take K/M/G/T suffixes (powers of 1024)\n");
        sb.Append('\n').Append(ExitStatus).Append('\n');
        return sb.ToString();
    }

    private static void AppendOption(StringBuilder sb, Opt o, int width)
    {
        string head = "  " + o.Usage.PadRight(width) + "  ";
        var line = new StringBuilder();
        Wrap(line, o.Help, new string(' ', head.Length), 110);
        sb.Append(head).Append(line.ToString(head.Length, line.Length - head.Length));
    }

    /// <summary>Appends <paramref name="text"/> wrapped at <paramref name="width"/> columns, each line indented.</summary>
    private static void Wrap(StringBuilder sb, string text, string indent, int width)
    {
        int col = 0;
        foreach (string word in text.Split(' '))
        {
            if (col > indent.Length && col + 1 + word.Length > width) { sb.Append('\n'); col = 0; }
            if (col == 0) { sb.Append(indent); col = indent.Length; }
            else { sb.Append(' '); col++; }
            sb.Append(word);
            col += word.Length;
        }
        sb.Append('\n');
    }

    // ------------------------------------------------------------------ man page

    /// <summary>The man page ublk-aot.1 (man(7) macros), as dist/ublk-aot.1 holds it.</summary>
    public static string Man()
    {
        var m = new StringBuilder();
        m.Append(".\\\" ublk-aot.1: generated by `ublk-aot help --man` from Ublk.Aot/Cli/CommandTable.cs; do not edit.\n");
        m.Append(".TH UBLK-AOT 1 ").Append(ManDate).Append(" \"ublk-aot ").Append(CommandLine.Version).Append("\" \"User Commands\"\n");
        m.Append(".SH NAME\nublk\\-aot \\- serve Linux ublk block devices from user space\n");
        m.Append(".SH SYNOPSIS\n");
        foreach (Command c in Commands)
        {
            if (c.Hidden) continue;
            m.Append(".B ublk\\-aot\n").Append(Roff(c.Synopsis)).Append("\n.br\n");
        }
        m.Append(".B ublk\\-aot\n\\-\\-version\n");
        m.Append(".SH DESCRIPTION\n");
        m.Append(Roff("ublk-aot is a ublk server: the kernel's ublk_drv presents /dev/ublkbN, and this program, one static " +
            "executable, serves its requests from a backend (RAM, a file or block device, or nothing) through io_uring. " +
            "Every command takes " + Timeout.Usage + ": " + Timeout.Help + ".")).Append('\n');
        m.Append(".SH COMMANDS\n");
        foreach (Command c in Commands)
        {
            if (c.Hidden) continue;
            m.Append(".SS ").Append(Roff(c.Name)).Append('\n');
            m.Append(".B ublk\\-aot\n").Append(Roff(c.Synopsis)).Append("\n.PP\n");
            m.Append(Roff(c.Description)).Append('\n');
            if (c.Options == ServeOptions && c.Name != "serve")
            {
                m.Append(".PP\nIt takes the options of\n.BR serve .\n");
                continue;
            }
            foreach (Opt o in c.Options)
            {
                if (o.Hidden) continue;
                m.Append(".TP\n");
                if (o.Arg == null) m.Append(".B ").Append(Roff(o.Name)).Append('\n');
                else m.Append(".BI ").Append(Roff(o.Name)).Append(" \" ").Append(Roff(o.Arg)).Append("\"\n");
                m.Append(Roff(o.Help)).Append('\n');
            }
        }
        m.Append(".SH BACKENDS\nThe SPEC of\n.B \\-\\-backend\nis one of:\n");
        // Left-adjusted: a syntax broken at \: has no space to stretch (groff -ww: "cannot adjust line").
        m.Append(".ad l\n");
        foreach (var k in BackendTable.All)
            // \: lets a long syntax break before an optional part (else groff cannot fit the tag on a line).
            m.Append(".TP\n.B ").Append(Roff(k.Syntax).Replace("[", "\\:[")).Append('\n').Append(Roff(k.Summary)).Append('\n');
        m.Append(".ad\n.PP\nSizes take K, M, G and T suffixes (powers of 1024).\n");
        m.Append(".SH JSON OUTPUT\n");
        m.Append(Roff("With --json a command prints one line of JSON on stdout. Field names are stable: fields may be added, " +
            "none is renamed or removed without a new major version.")).Append('\n');
        foreach (Command c in Commands)
        {
            if (c.JsonFields.Length == 0 || c.Hidden) continue;
            m.Append(".TP\n.B ").Append(Roff(c.Name + " --json")).Append('\n');
            m.Append(Roff(Capital(c.JsonShape) + ": " + string.Join(", ", c.JsonFields) + ".")).Append('\n');
        }
        m.Append(".SH EXIT STATUS\n");
        m.Append(".TP\n.B 0\nsuccess (also for \\-\\-help and \\-\\-version)\n");
        m.Append(".TP\n.B 1\n").Append(Roff("a runtime failure: a kernel command failed or timed out, a queue failed, del --safe found the device in use")).Append('\n');
        m.Append(".TP\n.B 2\n").Append(Roff("a usage or environment error: a malformed or unknown argument (refused before any device is " +
            "touched, in one line on stderr), no ublk_drv, not permitted, a feature this kernel lacks")).Append('\n');
        m.Append(".SH FILES\n");
        m.Append(".TP\n.I /dev/ublk\\-control\nthe kernel's ublk control device (module ublk_drv)\n");
        m.Append(".TP\n.I /run/ublk\\-aot/ID.json\n").Append(Roff("the state file of a device made with --recovery: its SPEC and options, read by recover")).Append('\n');
        m.Append(".TP\n.I /run/ublk\\-aot/ID.sock\n").Append(Roff("the control socket of a live server (resize, stats)")).Append('\n');
        m.Append(".TP\n.I /run/ublk\\-aot/ID.name\n").Append(Roff("the name of a device served from a config, for udev's /dev/disk/by-ublk/NAME")).Append('\n');
        m.Append(".TP\n.I /etc/ublk\\-aot/NAME.conf\n").Append(Roff("a device's config (serve --config; the unit ublk-aot@NAME.service reads it)")).Append('\n');
        m.Append(".SH ENVIRONMENT\n.TP\n.B UBLK_AOT_STATE_DIR\n").Append(Roff("the directory of the state files and control sockets instead of /run/ublk-aot")).Append('\n');
        m.Append(".TP\n.B NOTIFY_SOCKET\n").Append(Roff("set by systemd for Type=notify: serve sends READY=1 once the device is live and STOPPING=1 when it stops")).Append('\n');
        m.Append(".SH EXAMPLES\n.EX\n# modprobe ublk_drv\n# ublk\\-aot serve \\-\\-backend file:/var/lib/disk.img,size=8G \\-\\-recovery reissue &\n/dev/ublkb0\n");
        m.Append("# ublk\\-aot list \\-\\-json\n# ublk\\-aot del 0\n.EE\n");
        m.Append(".SH SEE ALSO\n.BR io_uring (7),\n.BR mount_namespaces (7),\n.BR systemd.service (5),\n.BR udev (7)\n");
        return m.ToString();
    }

    private static string Capital(string s) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..];

    /// <summary>
    /// Text for roff: backslashes as \e, an option's hyphens as \- (a word that starts with '-', and its path of
    /// words like `--io-mode`), and a line that would start with '.' or '\'' guarded by \&amp;.
    /// </summary>
    public static string Roff(string text)
    {
        var sb = new StringBuilder(text.Length + 16);
        bool optionWord = false;
        for (int i = 0; i < text.Length; i++)
        {
            char ch = text[i];
            bool wordStart = i == 0 || text[i - 1] is ' ' or '[' or '|' or '(' or '`' or '\n';
            if (wordStart) optionWord = ch == '-';
            if (ch is ' ' or '\n') optionWord = false;
            if (ch == '\\') sb.Append("\\e");
            else if (ch == '-' && (optionWord || NameHyphen(text, i))) sb.Append("\\-");
            else sb.Append(ch);
        }
        if (sb.Length > 0 && sb[0] is '.' or '\'') sb.Insert(0, "\\&");
        return sb.ToString();
    }

    /// <summary>A hyphen inside "ublk-aot" (the program's name, the command the reader types).</summary>
    private static bool NameHyphen(string text, int i)
        => i >= 4 && string.CompareOrdinal(text, i - 4, "ublk-aot", 0, 8) == 0;

    // ------------------------------------------------------------------ bash completion

    /// <summary>The bash completion script, as dist/ublk-aot.bash holds it (needs only bash, not bash-completion).</summary>
    public static string BashCompletion()
    {
        var b = new StringBuilder();
        b.Append("# bash completion for ublk-aot: generated by `ublk-aot help --bash-completion` from\n");
        b.Append("# Ublk.Aot/Cli/CommandTable.cs; do not edit. Install as /usr/share/bash-completion/completions/ublk-aot\n");
        b.Append("# or source it.\n\n");
        b.Append("_ublk_aot_ids()\n{\n    local d ids=()\n    for d in /sys/class/ublk-char/ublkc*; do\n        [[ -e $d ]] && ids+=(\"${d##*/ublkc}\")\n    done\n    echo \"${ids[*]}\"\n}\n\n");
        b.Append("_ublk_aot()\n{\n");
        b.Append("    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmd= i\n");
        b.Append("    COMPREPLY=()\n");
        b.Append("    for ((i = 1; i < COMP_CWORD; i++)); do\n");
        b.Append("        case ${COMP_WORDS[i]} in\n            --timeout) ((i++)) ;;\n            -*) ;;\n            *) cmd=${COMP_WORDS[i]}; break ;;\n        esac\n    done\n");
        b.Append("    if [[ $prev == --timeout ]]; then return; fi\n");
        var names = new List<string>();
        foreach (Command c in Commands) if (!c.Hidden) names.Add(c.Name);
        b.Append("    if [[ -z $cmd ]]; then\n");
        b.Append("        if [[ $cur == -* ]]; then\n            COMPREPLY=($(compgen -W '--help --version --timeout' -- \"$cur\"))\n");
        b.Append("        else\n            COMPREPLY=($(compgen -W '").Append(string.Join(' ', names)).Append("' -- \"$cur\"))\n        fi\n        return\n    fi\n");
        b.Append("    case $cmd in\n");
        foreach (Command c in Commands)
        {
            if (c.Hidden) continue;
            b.Append("    ").Append(c.Name).Append(")\n");
            var values = new List<string>();
            var files = new List<string>();
            var free = new List<string>();
            var opts = new List<string>();
            foreach (Opt o in c.Options)
            {
                if (o.Hidden) continue;
                opts.Add(o.Name);
                if (o.Arg == null) continue;
                if (o.Values.Length > 0) values.Add("            " + o.Name + ") COMPREPLY=($(compgen -W '" + string.Join(' ', o.Values) + "' -- \"$cur\")); return ;;\n");
                else if (o.File) files.Add(o.Name);
                else free.Add(o.Name);
            }
            opts.Add("--timeout");
            opts.Add("--help");
            if (values.Count + files.Count + free.Count > 0)
            {
                b.Append("        case $prev in\n");
                foreach (string v in values) b.Append(v);
                if (files.Count > 0) b.Append("            ").Append(string.Join('|', files)).Append(") COMPREPLY=($(compgen -f -- \"$cur\")); return ;;\n");
                if (free.Count > 0) b.Append("            ").Append(string.Join('|', free)).Append(") return ;;\n");
                b.Append("        esac\n");
            }
            string positional = c.Positional switch
            {
                Positional.DeviceId => "$(_ublk_aot_ids)",
                Positional.Command => string.Join(' ', names),
                _ => "",
            };
            b.Append("        if [[ $cur == -* ]]; then\n            COMPREPLY=($(compgen -W '").Append(string.Join(' ', opts)).Append("' -- \"$cur\"))\n");
            if (positional.Length > 0)
                b.Append("        else\n            COMPREPLY=($(compgen -W \"").Append(positional).Append("\" -- \"$cur\"))\n");
            b.Append("        fi\n        ;;\n");
        }
        b.Append("    esac\n}\n\ncomplete -F _ublk_aot ublk-aot\n");
        return b.ToString();
    }
}
