using System;
using System.Collections.Generic;
using System.IO;
using System.Text;
using System.Text.RegularExpressions;
using Xunit;

namespace Ublk.Aot.Tests.Architecture;

/// <summary>
/// Reads the product's sources and checks the README's layering: a file in layer L names no layer after L
/// (through a using, a qualified name or global::). Comments and string literals are blanked first, so prose and
/// messages may mention any layer. One blind spot, accepted: code inside an interpolated string's holes.
/// </summary>
public static class LayerCheck
{
    /// <summary>The README's order: each layer may use only those before it.</summary>
    public static readonly string[] Layers = ["Interop", "Abi", "Ring", "Ublk", "Backends", "Cli"];

    // "Ublk.Aot.Cli.X", "global::Ublk.Aot.Cli", or the short "Cli.X" that resolves inside namespace Ublk.Aot.*.
    // A bare "Ublk.Aot" (the root namespace) is not a reference to the Ublk layer.
    private static readonly Regex Reference = new(
        @"(?<![\w.])(?:global::)?(?:Ublk\.Aot\.(?<layer>Interop|Abi|Ring|Ublk|Backends|Cli)\b|(?<layer>Interop|Abi|Ring|Ublk|Backends|Cli)(?!\.Aot\b)\s*\.)",
        RegexOptions.CultureInvariant);

    private static readonly Regex Namespace = new(@"^\s*namespace\s+([\w.]+)", RegexOptions.Multiline | RegexOptions.CultureInvariant);

    public static int LayerIndex(string layer) => Array.IndexOf(Layers, layer);

    /// <summary>Upward references in <paramref name="source"/>, a file of <paramref name="layer"/>: "line N: X".</summary>
    public static List<string> UpwardReferences(string layer, string source)
    {
        int own = LayerIndex(layer);
        var found = new List<string>();
        string code = BlankCommentsAndStrings(source);
        foreach (Match m in Reference.Matches(code))
        {
            string target = m.Groups["layer"].Value;
            if (LayerIndex(target) <= own) continue;
            int line = 1;
            for (int i = 0; i < m.Index; i++) if (code[i] == '\n') line++;
            found.Add("line " + line + ": " + layer + " uses " + target + " (" + m.Value.Trim() + ")");
        }
        return found;
    }

    /// <summary>The declared namespace of a file, or null.</summary>
    public static string? DeclaredNamespace(string source)
    {
        Match m = Namespace.Match(BlankCommentsAndStrings(source));
        return m.Success ? m.Groups[1].Value : null;
    }

    /// <summary>Comments, strings and char literals replaced by spaces (newlines kept, so line numbers hold).</summary>
    public static string BlankCommentsAndStrings(string s)
    {
        var sb = new StringBuilder(s.Length);
        int i = 0;
        void Blank(int end)
        {
            for (; i < end && i < s.Length; i++) sb.Append(s[i] == '\n' ? '\n' : ' ');
        }
        while (i < s.Length)
        {
            char c = s[i];
            if (c == '/' && i + 1 < s.Length && s[i + 1] == '/')
            {
                int eol = s.IndexOf('\n', i);
                Blank(eol < 0 ? s.Length : eol);
            }
            else if (c == '/' && i + 1 < s.Length && s[i + 1] == '*')
            {
                int end = s.IndexOf("*/", i + 2, StringComparison.Ordinal);
                Blank(end < 0 ? s.Length : end + 2);
            }
            else if (c == '"' || ((c == '@' || c == '$') && i + 1 < s.Length && (s[i + 1] == '"' || s[i + 1] == '@' || s[i + 1] == '$')))
            {
                Blank(StringEnd(s, i));
            }
            else if (c == '\'')
            {
                int j = i + 1;
                while (j < s.Length && s[j] != '\'' && s[j] != '\n') j += s[j] == '\\' ? 2 : 1;
                Blank(j + 1);
            }
            else
            {
                sb.Append(c);
                i++;
            }
        }
        return sb.ToString();
    }

    /// <summary>Index just past the string literal that starts at <paramref name="start"/> (regular, verbatim, raw, interpolated).</summary>
    private static int StringEnd(string s, int start)
    {
        int i = start;
        bool verbatim = false;
        while (i < s.Length && (s[i] == '@' || s[i] == '$'))
        {
            if (s[i] == '@') verbatim = true;
            i++;
        }
        int quotes = 0;
        while (i + quotes < s.Length && s[i + quotes] == '"') quotes++;
        if (quotes >= 3)
        {
            string fence = new('"', quotes);
            int end = s.IndexOf(fence, i + quotes, StringComparison.Ordinal);
            return end < 0 ? s.Length : end + quotes;
        }
        if (quotes == 2) return i + 2; // ""
        i++;
        while (i < s.Length)
        {
            if (verbatim)
            {
                if (s[i] == '"' && i + 1 < s.Length && s[i + 1] == '"') { i += 2; continue; }
                if (s[i] == '"') return i + 1;
                i++;
            }
            else
            {
                if (s[i] == '\\') { i += 2; continue; }
                if (s[i] == '"' || s[i] == '\n') return i + 1;
                i++;
            }
        }
        return s.Length;
    }
}

public sealed class LayeringTests
{
    private static readonly string Src = Path.Combine(Integration.IntegrationEnv.RepoRoot, "Ublk.Aot");

    private static IEnumerable<(string Layer, string Path)> SourceFiles()
    {
        foreach (string f in Directory.EnumerateFiles(Src, "*.cs", SearchOption.AllDirectories))
        {
            string rel = Path.GetRelativePath(Src, f);
            int slash = rel.IndexOf(Path.DirectorySeparatorChar);
            yield return (slash < 0 ? "" : rel[..slash], f);
        }
    }

    [Fact]
    public void No_folder_references_a_layer_above_it()
    {
        var problems = new List<string>();
        int files = 0;
        foreach (var (layer, path) in SourceFiles())
        {
            if (layer.Length == 0) continue; // Program.cs: the entry point sits above every layer
            files++;
            foreach (string p in LayerCheck.UpwardReferences(layer, File.ReadAllText(path)))
                problems.Add(Path.GetRelativePath(Src, path) + " " + p);
        }
        Assert.True(files > 20, "found only " + files + " source files under " + Src);
        Assert.True(problems.Count == 0, "upward references:\n" + string.Join("\n", problems));
    }

    [Fact]
    public void Every_file_is_in_a_layer_folder_and_declares_that_layers_namespace()
    {
        var problems = new List<string>();
        foreach (var (layer, path) in SourceFiles())
        {
            string rel = Path.GetRelativePath(Src, path);
            string? ns = LayerCheck.DeclaredNamespace(File.ReadAllText(path));
            if (layer.Length == 0)
            {
                if (ns != "Ublk.Aot") problems.Add(rel + ": namespace " + ns + ", expected Ublk.Aot");
                continue;
            }
            if (LayerCheck.LayerIndex(layer) < 0) { problems.Add(rel + ": folder " + layer + " is not a layer"); continue; }
            if (ns != "Ublk.Aot." + layer && ns?.StartsWith("Ublk.Aot." + layer + ".", StringComparison.Ordinal) != true)
                problems.Add(rel + ": namespace " + ns + ", expected Ublk.Aot." + layer);
        }
        Assert.True(problems.Count == 0, string.Join("\n", problems));
    }

    [Fact]
    public void The_readme_lists_the_same_layers_in_the_same_order()
    {
        string readme = File.ReadAllText(Path.Combine(Integration.IntegrationEnv.RepoRoot, "README.md"));
        var listed = new List<string>();
        foreach (Match m in Regex.Matches(readme, @"^Ublk\.Aot/(\w+)\s", RegexOptions.Multiline)) listed.Add(m.Groups[1].Value);
        Assert.Equal(LayerCheck.Layers, listed.ToArray());
    }

    [Theory]
    [InlineData("Ublk", "using Ublk.Aot.Backends;\nnamespace Ublk.Aot.Ublk;", "line 1: Ublk uses Backends")]
    [InlineData("Backends", "namespace Ublk.Aot.Backends;\nclass A { void F() => throw new Cli.UsageException(\"x\"); }", "line 2: Backends uses Cli")]
    [InlineData("Ring", "namespace Ublk.Aot.Ring;\nclass A { object o = global::Ublk.Aot.Ublk.Sizes.Format(1); }", "line 2: Ring uses Ublk")]
    [InlineData("Interop", "using static Ublk.Aot.Abi.UblkConst;", "line 1: Interop uses Abi")]
    public void The_check_finds_an_upward_reference(string layer, string source, string expected)
    {
        List<string> found = LayerCheck.UpwardReferences(layer, source);
        Assert.Contains(found, f => f.StartsWith(expected, StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("Ublk", "namespace Ublk.Aot.Ublk;\n// uses Cli.UsageException in a comment\nclass A { string s = \"Backends.Table\"; string r = \"\"\"\n Cli.X \n\"\"\"; }")]
    [InlineData("Backends", "using Ublk.Aot.Ublk;\nusing Ublk.Aot.Ring;\nnamespace Ublk.Aot.Backends;\nclass A { char c = '\"'; string v = @\"Cli.\"\"x\"; }")]
    [InlineData("Interop", "namespace Ublk.Aot.Interop;\nclass A { int Ublk = 0; }")]
    public void Comments_strings_and_lower_layers_are_not_flagged(string layer, string source)
        => Assert.Empty(LayerCheck.UpwardReferences(layer, source));
}
