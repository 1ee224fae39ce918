using System;
using System.Globalization;
using Ublk.Aot.Cli;
using Ublk.Aot.Ublk;
using static Ublk.Aot.Abi.UblkConst;

namespace Ublk.Aot.Backends;

/// <summary>Parses --backend SPEC. Errors are UsageExceptions (bad spec) or UblkExceptions (file problems), one line each.</summary>
public static class BackendSpecParser
{
    public const string Help = "null:SIZE, mem:SIZE, file:PATH[,size=SIZE][,direct=on|off|auto] or fault:rate=R[,ops=read+write+flush+discard+write_zeroes][,seed=N][,errno=N]:SPEC";

    public static BackendSpec Parse(string spec, bool readOnly)
    {
        int colon = spec.IndexOf(':');
        string kind = colon < 0 ? spec : spec[..colon];
        string rest = colon < 0 ? "" : spec[(colon + 1)..];
        switch (kind)
        {
            case "null":
                return new NullSpec(ParsePositiveSize(rest, "null"));
            case "mem":
                return new MemSpec(ParsePositiveSize(rest, "mem"));
            case "file":
                return ParseFile(rest, readOnly);
            case "fault":
                return ParseFault(rest, readOnly);
            default:
                throw new UsageException("unknown backend '" + spec + "': expected " + Help);
        }
    }

    private static ulong ParsePositiveSize(string text, string kind)
    {
        if (text.Length == 0) throw new UsageException("backend " + kind + ": needs a size, e.g. " + kind + ":1G");
        ulong size = Sizes.Parse(text, kind + " size");
        if (size == 0) throw new UsageException("backend " + kind + ": size must be greater than 0");
        return size;
    }

    private static BackendSpec ParseFile(string rest, bool readOnly)
    {
        string[] parts = rest.Split(',');
        string path = parts[0];
        if (path.Length == 0) throw new UsageException("backend file: needs a path, e.g. file:/data/disk.img");
        ulong? size = null;
        bool? direct = null;
        for (int i = 1; i < parts.Length; i++)
        {
            (string k, string v) = KeyValue(parts[i], "file");
            switch (k)
            {
                case "size":
                    size = Sizes.Parse(v, "file size");
                    if (size == 0) throw new UsageException("backend file: size must be greater than 0");
                    break;
                case "direct":
                    direct = v switch
                    {
                        "on" => true,
                        "off" => false,
                        "auto" => null,
                        _ => throw new UsageException("backend file: direct must be on, off or auto"),
                    };
                    break;
                default:
                    throw new UsageException("backend file: unknown option '" + k + "' (size=, direct=)");
            }
        }
        var target = new FileTarget(path, size, readOnly, direct);
        if (target.Size == 0)
        {
            target.Dispose();
            throw new UsageException("backing file " + path + " is empty: give a size with file:" + path + ",size=SIZE");
        }
        return new FileSpec(target);
    }

    private static BackendSpec ParseFault(string rest, bool readOnly)
    {
        int colon = rest.IndexOf(':');
        if (colon < 0) throw new UsageException("backend fault: expected fault:OPTIONS:SPEC, e.g. fault:rate=0.1,ops=write:mem:64M");
        double rate = 0.1;
        uint mask = (1u << UBLK_IO_OP_READ) | (1u << UBLK_IO_OP_WRITE) | (1u << UBLK_IO_OP_FLUSH);
        ulong seed = 0x9E3779B97F4A7C15UL;
        int errno = Interop.Errno.EIO;
        foreach (string part in rest[..colon].Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            (string k, string v) = KeyValue(part, "fault");
            switch (k)
            {
                case "rate":
                    if (!double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out rate) || rate < 0 || rate > 1)
                        throw new UsageException("backend fault: rate must be a number between 0 and 1");
                    break;
                case "ops":
                    mask = 0;
                    foreach (string op in v.Split('+'))
                    {
                        mask |= op switch
                        {
                            "read" => 1u << UBLK_IO_OP_READ,
                            "write" => 1u << UBLK_IO_OP_WRITE,
                            "flush" => 1u << UBLK_IO_OP_FLUSH,
                            "discard" => 1u << UBLK_IO_OP_DISCARD,
                            "write_zeroes" => 1u << UBLK_IO_OP_WRITE_ZEROES,
                            "all" => (1u << UBLK_IO_OP_READ) | (1u << UBLK_IO_OP_WRITE) | (1u << UBLK_IO_OP_FLUSH) | (1u << UBLK_IO_OP_DISCARD) | (1u << UBLK_IO_OP_WRITE_ZEROES),
                            _ => throw new UsageException("backend fault: unknown op '" + op + "' (read, write, flush, discard, write_zeroes, all)"),
                        };
                    }
                    break;
                case "seed":
                    if (!ulong.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out seed)) throw new UsageException("backend fault: seed must be a number");
                    break;
                case "errno":
                    if (!int.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out errno) || errno < 1 || errno > 4095)
                        throw new UsageException("backend fault: errno must be a number between 1 and 4095");
                    break;
                default:
                    throw new UsageException("backend fault: unknown option '" + k + "' (rate=, ops=, seed=, errno=)");
            }
        }
        BackendSpec inner = Parse(rest[(colon + 1)..], readOnly);
        return new FaultSpec(new FaultConfig { Rate = rate, OpMask = mask, Seed = seed, Errno = errno }, inner);
    }

    private static (string, string) KeyValue(string part, string kind)
    {
        int eq = part.IndexOf('=');
        if (eq <= 0) throw new UsageException("backend " + kind + ": expected key=value, got '" + part + "'");
        return (part[..eq], part[(eq + 1)..]);
    }
}
