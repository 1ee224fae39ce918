using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;

namespace Ublk.Aot.Cli;

/// <summary>
/// `serve --config FILE`: the serve options of one device in a file (/etc/ublk-aot/NAME.conf for the unit
/// ublk-aot@NAME.service). One KEY=VALUE per line; blank lines and lines whose first non-blank character is '#' are
/// ignored (no comment after a value: a path may hold '#'); blanks around KEY and VALUE are trimmed. KEY is a serve
/// option without its "--" (backend=, queues=, id=, recovery=, io-mode=, ...); a switch (read-only, fixed-buffers,
/// huge-buffers, no-partition-scan, stats) takes yes or no. Each value goes through the command line's own parser
/// (<see cref="Serve.Option"/>), so the two cannot disagree. backend= and id= are required: a service manager's
/// restart must find the same device again (serve --id N recovers a device N that waits for its server).
/// An unknown key, a bad value or a key given twice is one line naming FILE:LINE, exit 2.
/// NAME (the file name without ".conf") names the device for udev: /dev/disk/by-ublk/NAME.
/// </summary>
public static class ServeConfig
{
    public const string Option = "--config";

    /// <summary>The arguments of `serve --config FILE`: FILE alone; options beside it are refused (FILE is the whole truth).</summary>
    public static Serve.Args Load(string[] argv)
    {
        if (argv.Length != 2 || argv[0] != Option)
        {
            if (argv[^1] == Option) throw new UsageException("serve: --config needs a value (a file of KEY=VALUE lines)");
            throw new UsageException("serve: --config FILE takes no other serve options: put them in FILE as KEY=VALUE lines");
        }
        return Read(argv[1]);
    }

    public static Serve.Args Read(string file)
    {
        string[] lines;
        try { lines = File.ReadAllLines(file); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UsageException("serve: cannot read config " + file + ": " + e.Message);
        }
        var a = new Serve.Args { Name = NameOf(file) };
        var seen = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int n = 1; n <= lines.Length; n++)
        {
            string line = lines[n - 1].Trim();
            if (line.Length == 0 || line[0] == '#') continue;
            string where = file + ":" + n.ToString(CultureInfo.InvariantCulture) + ": ";
            int eq = line.IndexOf('=');
            if (eq <= 0) throw new UsageException(where + "expected KEY=VALUE, got '" + line + "'");
            string key = line[..eq].TrimEnd();
            string value = line[(eq + 1)..].TrimStart();
            if (seen.TryGetValue(key, out int first))
                throw new UsageException(where + "duplicate key '" + key + "' (first on line " + first.ToString(CultureInfo.InvariantCulture) + ")");
            seen[key] = n;
            if (key == "backend") a.BackendWhere = where;
            Apply(a, key, value, where);
        }
        if (!seen.ContainsKey("backend")) throw new UsageException(file + ": backend= is required (a SPEC, as for serve --backend)");
        if (!seen.ContainsKey("id"))
            throw new UsageException(file + ": id= is required (a fixed device id: a restart after a crash recovers that device instead of making a new one)");
        return Serve.Finish(a, backendRequired: true, file + ": ");
    }

    /// <summary>KEY=VALUE onto <paramref name="a"/> through the command line's parser; refusals name the line.</summary>
    private static void Apply(Serve.Args a, string key, string value, string where)
    {
        // A key is an option's name: no dashes in front, nothing the command line would read as something else.
        if (key.StartsWith('-') || key == Option[2..] || key.Contains(' ', StringComparison.Ordinal))
            throw new UsageException(where + "unknown key '" + key + "'");
        string opt = "--" + key;
        try
        {
            // First on a scratch set, to learn the option's shape: a switch does not take the value.
            var probe = new Serve.Args();
            int i = 0;
            if (!Serve.Option(probe, [opt, value], ref i)) throw new UsageException(where + "unknown key '" + key + "'");
            if (i == 1)
            {
                i = 0;
                Serve.Option(a, [opt, value], ref i);
                return;
            }
            if (value == "yes")
            {
                i = 0;
                Serve.Option(a, [opt], ref i);
            }
            else if (value != "no") throw new UsageException(where + key + " must be yes or no, got '" + value + "'");
        }
        catch (UsageException e) when (!e.Message.StartsWith(where, StringComparison.Ordinal))
        {
            const string prefix = "serve: ";
            string m = e.Message.StartsWith(prefix, StringComparison.Ordinal) ? e.Message[prefix.Length..] : e.Message;
            throw new UsageException(where + key + ": " + m);
        }
    }

    /// <summary>The characters a device name may hold: it becomes a udev symlink /dev/disk/by-ublk/NAME and a unit instance.</summary>
    public static bool ValidName(string name)
    {
        if (name.Length == 0 || name.Length > 64 || name[0] == '.' || name[0] == '-') return false;
        foreach (char c in name)
            if (!(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.')) return false;
        return true;
    }

    private static string NameOf(string file)
    {
        string name = Path.GetFileName(file);
        if (name.EndsWith(".conf", StringComparison.Ordinal)) name = name[..^".conf".Length];
        if (!ValidName(name))
            throw new UsageException("serve: config " + file + ": the device name '" + name + "' (the file name without .conf) must be 1-64 letters, digits, '-', '_' or '.', not starting with '.' or '-'");
        return name;
    }
}
