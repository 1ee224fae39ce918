using System;
using System.Globalization;

namespace Ublk.Aot.Ublk;

/// <summary>Byte counts as people write them: 4096, 64K, 512M, 1G, 2T (powers of 1024; "KiB"/"KB"/"B" accepted).</summary>
public static class Sizes
{
    public static bool TryParse(string text, out ulong bytes)
    {
        bytes = 0;
        ReadOnlySpan<char> s = text.AsSpan().Trim();
        if (s.EndsWith("iB", StringComparison.OrdinalIgnoreCase)) s = s[..^2];
        else if (s.Length > 1 && (s[^1] == 'B' || s[^1] == 'b') && char.IsLetter(s[^2])) s = s[..^1];
        else if (s.Length > 0 && (s[^1] == 'B' || s[^1] == 'b') && s.Length > 1 && char.IsDigit(s[^2])) s = s[..^1];
        if (s.IsEmpty) return false;
        int shift = char.ToUpperInvariant(s[^1]) switch { 'K' => 10, 'M' => 20, 'G' => 30, 'T' => 40, 'P' => 50, _ => 0 };
        if (shift != 0) s = s[..^1];
        if (s.IsEmpty || !ulong.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out ulong n)) return false;
        if (shift != 0 && n > (ulong.MaxValue >> shift)) return false;
        bytes = n << shift;
        return true;
    }

    /// <summary>The message for text that <see cref="TryParse"/> refused; callers throw it as their own error type.</summary>
    public static string Invalid(string text, string what)
        => "invalid " + what + " '" + text + "': expected a number with an optional K/M/G/T suffix";

    public static string Format(ulong bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        int u = 0;
        double v = bytes;
        while (v >= 1024 && u < units.Length - 1) { v /= 1024; u++; }
        return u == 0 ? bytes + " B" : v.ToString(v >= 100 ? "0" : "0.#", CultureInfo.InvariantCulture) + " " + units[u];
    }
}
