using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;
using Ublk.Aot.Abi;
using Xunit;
using Xunit.Abstractions;

namespace Ublk.Aot.Tests.Abi;

/// <summary>
/// "Static asserts": every blittable struct and every constant of Ublk.Aot.Abi is compared with what
/// gcc makes of the newest kernel UAPI headers (see <see cref="UapiHeaders"/>). The C# side is
/// enumerated by reflection, so a new struct, field or constant is checked without touching this file.
/// </summary>
public sealed class AbiLayoutTests
{
    private const string AbiNamespace = "Ublk.Aot.Abi";

    private static readonly string[] s_headers =
    [
        "stddef.h", "stdio.h", "sys/uio.h",
        "linux/errno.h", "linux/types.h", "linux/time_types.h", "linux/fs.h", "linux/falloc.h",
        "linux/io_uring.h", "linux/ublk_cmd.h",
    ];

    /// <summary>Structs that must exist on the C# side (guards against the reflection scan silently finding nothing).</summary>
    private static readonly string[] s_requiredStructs =
    [
        "io_uring_params", "io_sqring_offsets", "io_cqring_offsets", "io_uring_sqe", "io_uring_cqe",
        "io_uring_getevents_arg", "__kernel_timespec", "iovec",
        "ublksrv_ctrl_cmd", "ublksrv_ctrl_dev_info", "ublksrv_io_desc", "ublksrv_io_cmd",
        "ublk_shmem_buf_reg", "ublk_auto_buf_reg", "ublk_elem_header", "ublk_batch_io",
        "ublk_param_basic", "ublk_param_discard", "ublk_param_devt", "ublk_param_zoned",
        "ublk_param_dma_align", "ublk_param_segment", "ublk_param_integrity", "ublk_params",
    ];

    /// <summary>
    /// C# fields whose name is not the C member designator, or whose C# extent is not sizeof(member).
    /// Value: (C member designator for offsetof, C expression for the size the C# field must have; null = sizeof(member)).
    /// </summary>
    private static readonly Dictionary<(string Type, string Field), (string Member, string? SizeExpr)> s_fieldMap = new()
    {
        // __u64 data[1]: C# flattens the one-element array.
        [("ublksrv_ctrl_cmd", "data0")] = ("data[0]", null),
        // __u8 cmd[0] (flexible, sizeof 0): C# gives it the 16 bytes it has up to the end of a 64-byte SQE.
        [("io_uring_sqe", "cmd")] = ("cmd", "sizeof(struct io_uring_sqe) - offsetof(struct io_uring_sqe, cmd)"),
    };

    /// <summary>C# constants that do not exist in the headers, with the C expression they must equal.</summary>
    private static readonly Dictionary<string, string> s_constMap = new()
    {
        ["SQE_SIZE"] = "sizeof(struct io_uring_sqe)",
        ["SQE128_SIZE"] = "2 * sizeof(struct io_uring_sqe)",
        ["URING_CMD_PAYLOAD_SQE64"] = "sizeof(struct io_uring_sqe) - offsetof(struct io_uring_sqe, cmd)",
        ["URING_CMD_PAYLOAD_SQE128"] = "2 * sizeof(struct io_uring_sqe) - offsetof(struct io_uring_sqe, cmd)",
    };

    /// <summary>
    /// C# names (struct, Type.field or constant) that older headers lack, with the UAPI version that added
    /// them (major, minor). Only when the headers' linux/version.h is older than that version, a check that
    /// gcc rejects because the name is not declared there is listed as absent instead of failing. Against
    /// the newest headers, and for every name an older header does declare, all checks stay strict.
    /// </summary>
    private static readonly Dictionary<string, (int Major, int Minor)> s_since = new()
    {
        ["ublksrv_ctrl_dev_info.io_desc_size"] = (7, 3), // __u16 pad0 before
        ["UBLK_F_IO_DESC_SIZE"] = (7, 3),
    };

    private static readonly Type[] s_constClasses = [typeof(IoUringConst), typeof(UblkConst)];

    private readonly ITestOutputHelper _output;

    public AbiLayoutTests(ITestOutputHelper output) => _output = output;

    // ---------------------------------------------------------------- structs

    [Fact]
    public void Struct_sizes_and_field_offsets_match_uapi_headers()
    {
        Type[] structs = AbiStructs();
        string[] absent = s_requiredStructs.Except(structs.Select(t => t.Name)).ToArray();
        Assert.True(absent.Length == 0, $"ABI structs not found by reflection in {AbiNamespace}: {string.Join(", ", absent)}");
        string[] staleMap = s_fieldMap.Keys
            .Where(k => structs.FirstOrDefault(t => t.Name == k.Type)?.GetField(k.Field, InstanceFields) == null)
            .Select(k => $"{k.Type}.{k.Field}").ToArray();

        var known = new HashSet<string>(structs.Select(t => t.Name), StringComparer.Ordinal);
        known.UnionWith(structs.SelectMany(t => t.GetFields(InstanceFields).Select(f => $"{t.Name}.{f.Name}")));
        known.UnionWith(AbiConstants().Select(c => c.Field.Name));

        var checks = new List<Check>();
        var problems = staleMap.Select(k => $"{k}: in the C#->C field mapping of AbiLayoutTests, but C# has no such field").ToList();
        problems.AddRange(s_since.Keys.Where(n => !known.Contains(n))
            .Select(n => $"{n}: in the since-version table of AbiLayoutTests, but C# has no such struct, field or constant"));
        var gaps = new List<Gap>();
        foreach (Type t in structs)
        {
            string cType = "struct " + t.Name;
            int unsafeSize = UnsafeSizeOf(t);
            checks.Add(new Check($"{t.Name} sizeof", $"sizeof({cType})", unsafeSize.ToString(CultureInfo.InvariantCulture), "Unsafe.SizeOf"));
            checks.Add(new Check($"{t.Name} sizeof", $"sizeof({cType})", Marshal.SizeOf(t).ToString(CultureInfo.InvariantCulture), "Marshal.SizeOf"));
            checks.Add(new Check($"{t.Name} alignof", $"_Alignof({cType})", Str(Alignment(t)), "max field alignment"));

            var covered = new bool[unsafeSize];
            foreach (FieldInfo f in t.GetFields(InstanceFields).OrderBy(f => (long)Marshal.OffsetOf(t, f.Name)))
            {
                int off = (int)Marshal.OffsetOf(t, f.Name);
                int size = UnsafeSizeOf(f.FieldType);
                var fixedBuf = f.GetCustomAttribute<FixedBufferAttribute>();
                (string member, string? sizeExpr) = s_fieldMap.TryGetValue((t.Name, f.Name), out var m) ? m : (f.Name, null);
                string access = $"((({cType} *)0)->{member})";
                string key = $"{t.Name}.{f.Name}";

                checks.Add(new Check($"{key} offset", $"offsetof({cType}, {member})", Str(off)));
                checks.Add(new Check($"{key} size", sizeExpr ?? $"sizeof{access}", Str(size)));
                if (fixedBuf != null)
                {
                    // Fixed buffer: the C member must be an array of elements of the same size and signedness.
                    checks.Add(new Check($"{key}[0] size", $"sizeof({access}[0])", Str(UnsafeSizeOf(fixedBuf.ElementType))));
                    if (sizeExpr == null)
                        checks.Add(new Check($"{key}[0] signedness", SignednessExpr($"{access}[0]"), Str(Signedness(fixedBuf.ElementType)), Kind: CheckKind.Signedness));
                }
                else
                {
                    checks.Add(new Check($"{key} signedness", SignednessExpr(access), Str(Signedness(f.FieldType)), Kind: CheckKind.Signedness));
                }

                for (int i = off; i < off + size && i < covered.Length; i++)
                    covered[i] = true;
                if (off + size > unsafeSize)
                    problems.Add($"{key}: C# field [{off}, {off + size}) runs past the C# struct size {unsafeSize}");
            }

            // A byte no C# field covers must be padding that gcc inserts as well (-Wpadded says where),
            // otherwise the header has a member that C# lacks.
            for (int i = 0; i < covered.Length; i++)
            {
                if (covered[i])
                    continue;
                int j = i;
                while (j < covered.Length && !covered[j])
                    j++;
                string[] next = t.GetFields(InstanceFields)
                    .Where(f => (int)Marshal.OffsetOf(t, f.Name) == j)
                    .Select(f => s_fieldMap.TryGetValue((t.Name, f.Name), out var m) ? m.Member : f.Name)
                    .ToArray();
                gaps.Add(new Gap(t.Name, i, j, next));
                i = j;
            }
        }

        (List<string> mismatches, string gccStderr) = Compare("abi_structs", checks, ["-Wpadded"]);
        problems.AddRange(mismatches);

        List<PaddingWarning> padding = ParsePaddingWarnings(gccStderr);
        foreach (Gap g in gaps)
        {
            bool trailing = g.NextMembers.Length == 0;
            PaddingWarning? w = padding.FirstOrDefault(p => p.Struct == g.Struct && (trailing ? p.Member == null : p.Member != null && g.NextMembers.Contains(p.Member)));
            string what = trailing ? "at the end" : $"before '{string.Join("'/'", g.NextMembers)}'";
            if (w != null)
                _output.WriteLine($"{g.Struct}: bytes [{g.Start}, {g.End}) are padding {what} (gcc -Wpadded: {w.Location})");
            else
                problems.Add($"{g.Struct}: bytes [{g.Start}, {g.End}) {what}: C has no padding there (gcc -Wpadded is silent), C# has no field (missing member?)");
        }

        Report("struct layout", checks.Count, problems);
    }

    private sealed record Gap(string Struct, int Start, int End, string[] NextMembers);

    /// <param name="Member">the member gcc pads to align; null for padding at the end of the struct</param>
    private sealed record PaddingWarning(string Struct, string? Member, string Location);

    /// <summary>
    /// gcc -Wpadded warnings, each attributed to the top-level struct of the header that encloses it
    /// (UAPI headers open every struct definition in column 0; end padding is reported on that line).
    /// </summary>
    private static List<PaddingWarning> ParsePaddingWarnings(string stderr)
    {
        var result = new List<PaddingWarning>();
        var fileCache = new Dictionary<string, string[]>();
        var structStart = new Regex(@"^struct\s+(\w+)\s*(\{|$)");
        foreach (Match m in Regex.Matches(stderr, @"^(?<file>[^:\n]+):(?<line>\d+):\d+: warning: padding struct (?:to align '(?<member>[^']+)'|size to alignment boundary)", RegexOptions.Multiline))
        {
            string file = m.Groups["file"].Value;
            int line = int.Parse(m.Groups["line"].Value, CultureInfo.InvariantCulture);
            if (!fileCache.TryGetValue(file, out string[]? lines))
                fileCache[file] = lines = File.Exists(file) ? File.ReadAllLines(file) : [];
            for (int i = Math.Min(line, lines.Length) - 1; i >= 0; i--)
            {
                Match s = structStart.Match(lines[i]);
                if (s.Success)
                {
                    string? member = m.Groups["member"].Success ? m.Groups["member"].Value : null;
                    result.Add(new PaddingWarning(s.Groups[1].Value, member, $"{Path.GetFileName(file)}:{line}"));
                    break;
                }
            }
        }
        return result;
    }

    // ---------------------------------------------------------------- constants C# -> C

    [Fact]
    public void Constants_match_uapi_headers()
    {
        var consts = AbiConstants().ToList();
        Assert.True(consts.Count > 100, $"expected the IoUringConst/UblkConst constants, found {consts.Count}");
        string[] staleMap = s_constMap.Keys.Except(consts.Select(c => c.Field.Name)).ToArray();

        var checks = new List<Check>();
        foreach ((Type owner, FieldInfo f) in consts)
        {
            object raw = f.GetRawConstantValue() ?? throw new InvalidOperationException($"{owner.Name}.{f.Name} has no value");
            string value = FormatInteger(raw, $"{owner.Name}.{f.Name}");
            string cExpr = s_constMap.TryGetValue(f.Name, out string? e) ? e : f.Name;
            checks.Add(new Check(f.Name, cExpr, value, $"{owner.Name}.{f.Name} ({raw.GetType().Name})"));
        }

        (List<string> problems, _) = Compare("abi_consts", checks, []);
        problems.AddRange(staleMap.Select(n => $"{n}: in the C#->C constant mapping of AbiLayoutTests, but C# has no such constant"));
        Report("constant", checks.Count, problems);
    }

    // ---------------------------------------------------------------- ublk_cmd.h -> C#

    [Fact]
    public void Every_ublk_header_define_has_a_csharp_constant()
    {
        string header = UapiHeaders.UblkCmdHeader;
        string[] lines = File.ReadAllLines(header);
        _output.WriteLine($"headers: {UapiHeaders.IncludeDir} (from {UapiHeaders.Source})");

        // Include guard: the first #ifndef X directly followed by #define X.
        string? guard = null;
        var ifndef = new Regex(@"^\s*#\s*ifndef\s+(\w+)");
        var define = new Regex(@"^\s*#\s*define\s+(\w+)(\(?)");
        for (int i = 0; i + 1 < lines.Length; i++)
        {
            var m = ifndef.Match(lines[i]);
            if (!m.Success)
                continue;
            var d = define.Match(lines[i + 1]);
            if (d.Success && d.Groups[1].Value == m.Groups[1].Value)
                guard = m.Groups[1].Value;
            break;
        }

        var defined = new List<string>();
        foreach (string line in lines)
        {
            var d = define.Match(line);
            if (!d.Success || d.Groups[2].Value == "(")
                continue; // not a define, or a function-like macro
            string name = d.Groups[1].Value;
            if (name == guard || !(name.StartsWith("UBLK_", StringComparison.Ordinal) || name.StartsWith("UBLKSRV_", StringComparison.Ordinal)))
                continue;
            defined.Add(name);
        }
        Assert.True(defined.Count > 50, $"parsed only {defined.Count} UBLK_/UBLKSRV_ defines from {header}");

        var csharp = new HashSet<string>(
            typeof(UblkConst).GetFields(BindingFlags.Public | BindingFlags.Static).Where(f => f.IsLiteral).Select(f => f.Name),
            StringComparer.Ordinal);
        string[] missing = defined.Distinct().Where(n => !csharp.Contains(n)).ToArray();
        _output.WriteLine($"{defined.Count} object-like UBLK_/UBLKSRV_ defines in {header}, {missing.Length} missing in UblkConst");
        if (missing.Length > 0)
        {
            Assert.Fail($"{missing.Length} object-like #define(s) of {header} have no public const in UblkConst:\n  " +
                string.Join("\n  ", missing));
        }
    }

    [Fact]
    public void Feature_names_match_the_UBLK_F_constants()
    {
        var byBit = new SortedDictionary<int, string>();
        var problems = new List<string>();
        foreach (FieldInfo f in typeof(UblkConst).GetFields(BindingFlags.Public | BindingFlags.Static)
                     .Where(f => f.IsLiteral && f.Name.StartsWith("UBLK_F_", StringComparison.Ordinal)))
        {
            ulong v = (ulong)f.GetRawConstantValue()!;
            if (v == 0 || (v & (v - 1)) != 0)
            {
                problems.Add($"{f.Name} = 0x{v:x} is not a single feature bit");
                continue;
            }
            byBit.Add(System.Numerics.BitOperations.TrailingZeroCount(v), f.Name["UBLK_F_".Length..]);
        }
        Assert.True(byBit.Count >= 20, $"expected the UBLK_F_ constants of UblkConst, found {byBit.Count}");

        string[] names = UblkConst.FeatureNames;
        for (int bit = 0; bit < Math.Max(names.Length, byBit.Keys.Max() + 1); bit++)
        {
            string? constant = byBit.GetValueOrDefault(bit);
            string? name = bit < names.Length ? names[bit] : null;
            if (constant != name)
                problems.Add($"bit {bit}: UblkConst.FeatureNames has {name ?? "<nothing>"}, the UBLK_F_ constant is {constant ?? "<none>"}");
        }
        _output.WriteLine($"{names.Length} feature names, {byBit.Count} UBLK_F_ constants");
        Assert.True(problems.Count == 0, "UblkConst.FeatureNames does not match the UBLK_F_ constants:\n  " + string.Join("\n  ", problems));
    }

    // ---------------------------------------------------------------- plumbing

    private const BindingFlags InstanceFields = BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic;

    private enum CheckKind { Equal, Signedness }

    /// <param name="Key">what is compared (one C printf line per distinct key)</param>
    /// <param name="CExpr">C expression that yields the header's value</param>
    /// <param name="CSharp">the C# value, formatted like the C side prints it</param>
    /// <param name="CSharpSource">where the C# value came from, when not obvious from the key</param>
    private sealed record Check(string Key, string CExpr, string CSharp, string? CSharpSource = null, CheckKind Kind = CheckKind.Equal);

    /// <summary>The C# name a check key is about: the struct, Type.field or constant before the first ' ' or '['.</summary>
    private static string SubjectOf(string key) => Regex.Match(key, @"^[\w.]+").Value;

    /// <summary>
    /// Why gcc's rejection of <paramref name="key"/> is tolerated (the name is in <see cref="s_since"/>, newer
    /// than the headers, and gcc says it is not declared), or null when it is a mismatch.
    /// </summary>
    private static string? AbsentFromOlderHeaders(string key, string gccError)
    {
        if (!s_since.TryGetValue(SubjectOf(key), out var since))
            return null;
        if (!gccError.Contains("undeclared", StringComparison.Ordinal) && !gccError.Contains("has no member named", StringComparison.Ordinal))
            return null;
        if (UapiHeaders.LinuxVersion is not (int major, int minor) || (major, minor).CompareTo(since) >= 0)
            return null;
        return $"the headers are Linux {major}.{minor}, the name is from {since.Major}.{since.Minor}";
    }

    private static Type[] AbiStructs() =>
        typeof(io_uring_sqe).Assembly.GetTypes()
            .Where(t => t.Namespace == AbiNamespace && t.IsValueType && !t.IsEnum && !t.IsNested && !t.IsGenericType
                        && t.GetCustomAttribute<CompilerGeneratedAttribute>() == null)
            .OrderBy(t => t.Name, StringComparer.Ordinal)
            .ToArray();

    private static IEnumerable<(Type Owner, FieldInfo Field)> AbiConstants() =>
        s_constClasses.SelectMany(c => c.GetFields(BindingFlags.Public | BindingFlags.Static)
            .Where(f => f.IsLiteral && !f.IsInitOnly)
            .Select(f => (c, f)));

    private static int UnsafeSizeOf(Type t) =>
        (int)typeof(Unsafe).GetMethod(nameof(Unsafe.SizeOf))!.MakeGenericMethod(t).Invoke(null, null)!;

    /// <summary>The runtime's alignment of a blittable type: its own size for primitives, else the largest field alignment.</summary>
    private static int Alignment(Type t)
    {
        if (t.IsPrimitive || t.IsPointer)
            return UnsafeSizeOf(t);
        FieldInfo[] fields = t.GetFields(InstanceFields);
        return fields.Length == 0 ? 1 : Math.Min(8, fields.Max(f => Alignment(f.FieldType)));
    }

    private static string Str(int v) => v.ToString(CultureInfo.InvariantCulture);

    /// <summary>1 signed integer, 0 unsigned integer, 2 anything else (pointer, array, struct, enum).</summary>
    private static int Signedness(Type t)
    {
        if (t == typeof(sbyte) || t == typeof(short) || t == typeof(int) || t == typeof(long) || t == typeof(nint))
            return 1;
        if (t == typeof(byte) || t == typeof(ushort) || t == typeof(uint) || t == typeof(ulong) || t == typeof(nuint))
            return 0;
        return 2;
    }

    private static string SignednessExpr(string access) =>
        $"_Generic({access}, signed char: 1, short: 1, int: 1, long: 1, long long: 1, " +
        "unsigned char: 0, unsigned short: 0, unsigned int: 0, unsigned long: 0, unsigned long long: 0, default: 2)";

    private static string SignName(string v) => v switch { "1" => "signed", "0" => "unsigned", _ => "non-integer" };

    /// <summary>Exact decimal value: negative numbers as signed, everything else as unsigned (as the C probe prints).</summary>
    private static string FormatInteger(object raw, string what)
    {
        long? signed = raw switch
        {
            sbyte v => v, short v => v, int v => v, long v => v, nint v => v,
            _ => null,
        };
        if (signed is long s)
            return s < 0 ? s.ToString(CultureInfo.InvariantCulture) : ((ulong)s).ToString(CultureInfo.InvariantCulture);
        ulong? unsigned = raw switch
        {
            byte v => v, ushort v => v, uint v => v, ulong v => v, nuint v => v, char v => v,
            _ => null,
        };
        if (unsigned is ulong u)
            return u.ToString(CultureInfo.InvariantCulture);
        throw new InvalidOperationException($"{what}: constant of type {raw.GetType()} cannot be compared with C");
    }

    /// <summary>
    /// Generates one C probe for all checks, runs it and returns every mismatch. A check that gcc
    /// rejects (undeclared name, no such member, not an array...) is reported as a mismatch with gcc's
    /// error, and the probe is rebuilt without it, so that one failure never hides the others.
    /// </summary>
    private (List<string> Problems, string GccStderr) Compare(string probeName, List<Check> checks, string[] gccArgs)
    {
        var keys = new List<string>();
        var exprByKey = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (Check ch in checks)
        {
            if (exprByKey.TryAdd(ch.Key, ch.CExpr))
                keys.Add(ch.Key);
            else if (exprByKey[ch.Key] != ch.CExpr)
                throw new InvalidOperationException($"two C expressions for {ch.Key}");
        }

        _output.WriteLine($"headers: {UapiHeaders.IncludeDir} (from {UapiHeaders.Source}); {UapiHeaders.GccVersion()}");
        var rejected = new Dictionary<string, string>(StringComparer.Ordinal); // key -> gcc error
        UapiHeaders.ProbeResult probe;
        while (true)
        {
            var src = new StringBuilder();
            src.AppendLine("/* Generated by Ublk.Aot.Tests AbiLayoutTests. */");
            foreach (string h in s_headers)
                src.AppendLine($"#include <{h}>");
            src.AppendLine("#define P(k, e) do { if ((e) < 0) printf(\"%s %lld\\n\", k, (long long)(e)); " +
                           "else printf(\"%s %llu\\n\", k, (unsigned long long)(e)); } while (0)");
            src.AppendLine("int main(void)");
            src.AppendLine("{");
            int line = s_headers.Length + 5; // the next line's number
            var keyByLine = new Dictionary<int, string>();
            foreach (string k in keys.Where(k => !rejected.ContainsKey(k)))
            {
                src.AppendLine($"\tP(\"{k}\", {exprByKey[k]});");
                keyByLine[line++] = k;
            }
            src.AppendLine("\treturn 0;");
            src.AppendLine("}");

            probe = UapiHeaders.CompileAndRun(probeName, src.ToString(), gccArgs);
            if (probe.Compiled)
                break;

            // Attribute each gcc error (with its notes) to the probe lines it mentions.
            int before = rejected.Count;
            string fileRe = Regex.Escape(probe.SourcePath);
            string? error = null;
            foreach (string l in probe.GccStderr.Split('\n'))
            {
                Match m = Regex.Match(l, $@"^{fileRe}:(\d+):\d+: (error|warning|note): (.*)$");
                if (!m.Success)
                    continue;
                if (m.Groups[2].Value == "error")
                    error = m.Groups[3].Value;
                else if (m.Groups[2].Value == "warning")
                    error = null;
                if (error != null && keyByLine.TryGetValue(int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture), out string? key))
                    rejected.TryAdd(key, error);
            }
            if (rejected.Count == before)
            {
                Assert.Fail($"gcc could not compile the ABI probe against {UapiHeaders.IncludeDir} (source kept: {probe.SourcePath}):\n" +
                    UapiHeaders.Truncate(probe.GccStderr, 20000));
            }
        }

        var problems = new List<string>();
        foreach (Check ch in checks)
        {
            string from = ch.CSharpSource != null ? $" [{ch.CSharpSource}]" : "";
            if (rejected.TryGetValue(ch.Key, out string? gccError))
            {
                if (AbsentFromOlderHeaders(ch.Key, gccError) is string why)
                {
                    _output.WriteLine($"{ch.Key}: absent, not checked ({why}; gcc: {gccError})");
                    continue;
                }
                problems.Add($"{ch.Key}: C <gcc: {gccError}>, C# {ch.CSharp}{from}");
                continue;
            }
            if (!probe.Values.TryGetValue(ch.Key, out string? cValue))
            {
                problems.Add($"{ch.Key}: C <not printed>, C# {ch.CSharp}{from}");
                continue;
            }
            if (ch.Kind == CheckKind.Signedness)
            {
                // Only integer members carry a signedness; pointers and one-element arrays may map to integers.
                if (cValue != "2" && cValue != ch.CSharp)
                    problems.Add($"{ch.Key}: C {SignName(cValue)}, C# {SignName(ch.CSharp)}{from}");
            }
            else if (cValue != ch.CSharp)
            {
                problems.Add($"{ch.Key}: C {cValue}, C# {ch.CSharp}{from}");
            }
        }
        return (problems, probe.GccStderr);
    }

    private void Report(string what, int count, List<string> problems)
    {
        _output.WriteLine($"{count} {what} checks, {problems.Count} mismatches");
        if (problems.Count > 0)
        {
            Assert.Fail($"{problems.Count} {what} mismatch(es) against {UapiHeaders.IncludeDir} (name: C value, C# value):\n  " +
                string.Join("\n  ", problems));
        }
    }
}
