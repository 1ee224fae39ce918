using System.Text;

namespace Ublk.Aot.Backends;

/// <summary>
/// Every backend ublk-aot has, one row each. The usage text, the SPEC parser and the "unknown backend" message all
/// read this table: adding a backend is its folder plus one row here.
/// </summary>
public static class BackendTable
{
    public static readonly BackendKind[] All =
    [
        NullSpec.Kind,
        MemSpec.Kind,
        FileSpec.Kind,
        FaultSpec.Kind,
        NbdSpec.Kind,
        Qcow2Spec.Kind,
    ];

    /// <summary>"null:SIZE | mem:SIZE | …", for one-line messages.</summary>
    public static string Syntax { get; } = Join(" | ");

    /// <summary>One line per backend, "  SYNTAX  summary", for the usage text.</summary>
    public static string Help(string indent)
    {
        var sb = new StringBuilder();
        foreach (BackendKind k in All)
        {
            if (sb.Length > 0) sb.Append('\n');
            sb.Append(indent).Append(k.Syntax).Append('\n').Append(indent).Append("    ").Append(k.Summary);
        }
        return sb.ToString();
    }

    /// <summary>Parses a whole --backend SPEC ("KIND:REST"). Throws <see cref="SpecException"/>.</summary>
    public static BackendSpec Parse(string spec, SpecContext context)
    {
        int colon = spec.IndexOf(':');
        string name = colon < 0 ? spec : spec[..colon];
        string rest = colon < 0 ? "" : spec[(colon + 1)..];
        foreach (BackendKind k in All)
            if (k.Takes(name)) return k.ParseSpec(spec, rest, context);
        throw new SpecException("unknown backend '" + spec + "': expected " + Syntax);
    }

    private static string Join(string separator)
    {
        var sb = new StringBuilder();
        foreach (BackendKind k in All)
        {
            if (sb.Length > 0) sb.Append(separator);
            sb.Append(k.Syntax);
        }
        return sb.ToString();
    }
}
