using System;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Backends;

/// <summary>What a spec is parsed for: options of the device that change how a backend opens its storage.</summary>
public readonly record struct SpecContext(bool ReadOnly);

/// <summary>
/// One row of <see cref="BackendTable"/>: a backend's name (the SPEC prefix), its syntax and one-line summary for the
/// usage text, and its parser. Each backend folder defines its own row next to its struct.
/// </summary>
/// <remarks>
/// <paramref name="aliases"/> are more prefixes the same parser takes (nbd+unix, and the TLS schemes it refuses in
/// words of its own); with <paramref name="wholeSpec"/> the parser gets the whole SPEC (a URI), not what follows ':'.
/// </remarks>
public sealed class BackendKind(string name, string syntax, string summary, Func<SpecReader, string, SpecContext, BackendSpec> parse,
    string[]? aliases = null, bool wholeSpec = false)
{
    /// <summary>True if a SPEC whose prefix is <paramref name="prefix"/> is this backend's.</summary>
    public bool Takes(string prefix) => prefix == Name || (aliases != null && Array.IndexOf(aliases, prefix) >= 0);

    /// <summary>Parses a whole SPEC whose prefix this kind <see cref="Takes"/>.</summary>
    public BackendSpec ParseSpec(string spec, string rest, SpecContext context) => parse(new SpecReader(Name), wholeSpec ? spec : rest, context);

    /// <summary>The prefix before the first ':' of a SPEC.</summary>
    public string Name { get; } = name;
    /// <summary>e.g. "mem:SIZE".</summary>
    public string Syntax { get; } = syntax;
    public string Summary { get; } = summary;
}

/// <summary>What every backend's parser shares, so that all of them word their errors alike ("backend KIND: …").</summary>
public readonly struct SpecReader(string kind)
{
    public string Kind { get; } = kind;

    public SpecException Error(string message, int errno = 0) => new("backend " + Kind + ": " + message, errno);

    /// <summary>A size with an optional K/M/G/T suffix; <paramref name="what"/> names it in the error.</summary>
    public ulong Size(string text, string what)
        => Sizes.TryParse(text, out ulong v) ? v : throw new SpecException(Sizes.Invalid(text, what));

    /// <summary>A size that must be given and be greater than 0.</summary>
    public ulong PositiveSize(string text, string what)
    {
        if (text.Length == 0) throw Error("needs a size, e.g. " + Kind + ":1G");
        ulong size = Size(text, what);
        if (size == 0) throw Error("size must be greater than 0");
        return size;
    }

    /// <summary>Splits "key=value".</summary>
    public (string Key, string Value) KeyValue(string part)
    {
        int eq = part.IndexOf('=');
        if (eq <= 0) throw Error("expected key=value, got '" + part + "'");
        return (part[..eq], part[(eq + 1)..]);
    }
}
