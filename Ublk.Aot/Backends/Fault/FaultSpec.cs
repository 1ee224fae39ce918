using System;
using System.Globalization;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Backends;

/// <summary>fault:OPTIONS:SPEC — any leaf backend, with a chosen fraction of chosen ops failed (one level: no fault over fault).</summary>
public sealed class FaultSpec(FaultConfig config, BackendSpec inner) : BackendSpec, IBackendWrapper
{
    public static readonly BackendKind Kind = new("fault", "fault:rate=R[,ops=read+write+flush+discard+write_zeroes][,seed=N][,errno=N]:SPEC",
        "SPEC with a fraction R of the chosen ops failed with errno (EIO), to test the stack above",
        Parse);

    public FaultConfig Config { get; } = config;
    public BackendSpec Inner { get; } = inner;
    public string Name => Kind.Name;
    public override string Describe() => "fault(rate=" + Config.Rate.ToString(CultureInfo.InvariantCulture) + ") over " + Inner.Describe();

    public override TResult Build<TResult>(IBackendConsumer<TResult> consumer) => Inner.BuildWrapped(this, consumer);

    public TResult Wrap<TInner, TResult>(TInner inner, BackendCaps caps, int[] files, IBackendConsumer<TResult> consumer)
        where TInner : struct, IBackend
        => consumer.Use(new FaultBackend<TInner>(inner, Config), caps, files);

    // A resize is the inner backend's; the fault options stay as they are.
    public override string? CheckResize(ulong newSize) => Inner.CheckResize(newSize);
    public override Action GrowTo(ulong newSize) => Inner.GrowTo(newSize);
    public override void ShrinkTo(ulong newSize) => Inner.ShrinkTo(newSize);

    /// <summary>"fault:OPTIONS:INNER" with INNER rewritten by the inner backend.</summary>
    public override string Respec(string text, ulong newSize)
    {
        int colon = text.IndexOf(':', Kind.Name.Length + 1);
        return colon < 0 ? text : text[..(colon + 1)] + Inner.Respec(text[(colon + 1)..], newSize);
    }

    public override void Dispose() => Inner.Dispose();

    private static BackendSpec Parse(SpecReader r, string rest, SpecContext context)
    {
        int colon = rest.IndexOf(':');
        if (colon < 0) throw r.Error("expected fault:OPTIONS:SPEC, e.g. fault:rate=0.1,ops=write:mem:64M");
        var c = new FaultConfig(); // the defaults, then what the spec says
        foreach (string part in rest[..colon].Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            (string k, string v) = r.KeyValue(part);
            switch (k)
            {
                case "rate":
                    if (!double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out double rate) || rate < 0 || rate > 1)
                        throw r.Error("rate must be a number between 0 and 1");
                    c.Rate = rate;
                    break;
                case "ops":
                    uint mask = 0;
                    foreach (string op in v.Split('+'))
                    {
                        mask |= op switch
                        {
                            "read" => FaultOps.Read,
                            "write" => FaultOps.Write,
                            "flush" => FaultOps.Flush,
                            "discard" => FaultOps.Discard,
                            "write_zeroes" => FaultOps.WriteZeroes,
                            "all" => FaultOps.All,
                            _ => throw r.Error("unknown op '" + op + "' (read, write, flush, discard, write_zeroes, all)"),
                        };
                    }
                    c.OpMask = mask;
                    break;
                case "seed":
                    if (!ulong.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out ulong seed)) throw r.Error("seed must be a number");
                    c.Seed = seed;
                    break;
                case "errno":
                    if (!int.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out int errno) || errno < 1 || errno > 4095)
                        throw r.Error("errno must be a number between 1 and 4095");
                    c.Errno = errno;
                    break;
                default:
                    throw r.Error("unknown option '" + k + "' (rate=, ops=, seed=, errno=)");
            }
        }
        BackendSpec inner = BackendTable.Parse(rest[(colon + 1)..], context);
        if (inner is FaultSpec)
        {
            inner.Dispose();
            throw r.Error("cannot wrap " + inner.Describe());
        }
        return new FaultSpec(c, inner);
    }
}
