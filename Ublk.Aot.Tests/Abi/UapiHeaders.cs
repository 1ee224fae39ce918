using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text.RegularExpressions;
using System.Threading.Tasks;
using Xunit;

namespace Ublk.Aot.Tests.Abi;

/// <summary>
/// Finds the newest kernel UAPI headers and runs small C programs against them with gcc.
/// Everything here hard-fails (never skips): a host without headers or gcc cannot vouch for the ABI.
/// </summary>
internal static class UapiHeaders
{
    public const string IncludeEnvVar = "UBLK_UAPI_INCLUDE";
    public const string Script = "scripts/uapi-headers.sh";

    private static readonly Lazy<string> s_repoRoot = new(FindRepoRoot);
    private static readonly Lazy<string> s_includeDir = new(ResolveIncludeDir);
    private static readonly Lazy<string[]> s_gccIncludeArgs = new(BuildGccIncludeArgs);
    private static readonly Lazy<(int, int)?> s_linuxVersion = new(ReadLinuxVersion);

    /// <summary>The directory that holds Ublk.Aot.csproj.</summary>
    public static string RepoRoot => s_repoRoot.Value;

    /// <summary>Include directory with linux/ublk_cmd.h and linux/io_uring.h (UBLK_UAPI_INCLUDE or scripts/uapi-headers.sh).</summary>
    public static string IncludeDir => s_includeDir.Value;

    public static string UblkCmdHeader => Path.Combine(IncludeDir, "linux", "ublk_cmd.h");

    /// <summary>
    /// (major, minor) from LINUX_VERSION_CODE of the include directory's own linux/version.h; null when it
    /// has none (gcc would then see the host's), so that nothing is taken for older than it is.
    /// </summary>
    public static (int Major, int Minor)? LinuxVersion => s_linuxVersion.Value;

    /// <summary>Where the include directory came from, for test output.</summary>
    public static string Source { get; private set; } = "";

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Ublk.Aot.csproj")))
                return dir.FullName;
        }
        Assert.Fail($"Cannot find the repository root (a directory holding Ublk.Aot.csproj) above {AppContext.BaseDirectory}.");
        return null!;
    }

    private static string ResolveIncludeDir()
    {
        string dir;
        string? env = Environment.GetEnvironmentVariable(IncludeEnvVar);
        if (!string.IsNullOrWhiteSpace(env))
        {
            dir = env.Trim();
            Source = $"${IncludeEnvVar}";
        }
        else
        {
            string script = Path.Combine(RepoRoot, Script);
            if (!File.Exists(script))
                Assert.Fail($"No UAPI headers: ${IncludeEnvVar} is not set and {script} does not exist.");

            var r = Run("bash", [script], RepoRoot, TimeSpan.FromMinutes(15));
            if (r.ExitCode != 0)
                Assert.Fail($"{Script} failed (exit {r.ExitCode}).\nstdout:\n{r.Stdout}\nstderr:\n{r.Stderr}");
            string? line = r.Stdout.Split('\n').Select(l => l.Trim()).LastOrDefault(l => l.Length > 0);
            if (line == null)
                Assert.Fail($"{Script} printed no include directory.\nstderr:\n{r.Stderr}");
            dir = line;
            Source = Script;
        }

        dir = Path.GetFullPath(dir, RepoRoot);
        string[] required = ["linux/ublk_cmd.h", "linux/io_uring.h", "linux/types.h"];
        string[] missing = required.Where(h => !File.Exists(Path.Combine(dir, h))).ToArray();
        if (missing.Length > 0)
            Assert.Fail($"UAPI include directory '{dir}' (from {Source}) lacks: {string.Join(", ", missing)}.");
        return dir;
    }

    private static (int, int)? ReadLinuxVersion()
    {
        string file = Path.Combine(IncludeDir, "linux", "version.h");
        if (!File.Exists(file))
            return null;
        Match m = Regex.Match(File.ReadAllText(file), @"^\s*#\s*define\s+LINUX_VERSION_CODE\s+(\d+)\s*$", RegexOptions.Multiline);
        if (!m.Success)
            return null;
        int code = int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
        return (code >> 16, (code >> 8) & 0xff);
    }

    /// <summary>
    /// -I for the UAPI directory, plus its multiarch subdirectory (asm/) when present, so that no
    /// header of the host's own (older) linux-libc-dev is picked up.
    /// </summary>
    private static string[] BuildGccIncludeArgs()
    {
        var args = new List<string> { "-I" + IncludeDir };
        var r = RunGcc(["-print-multiarch"], Path.GetTempPath());
        string multiarch = r.Stdout.Trim();
        if (r.ExitCode == 0 && multiarch.Length > 0 && Directory.Exists(Path.Combine(IncludeDir, multiarch, "asm")))
            args.Add("-I" + Path.Combine(IncludeDir, multiarch));
        return args.ToArray();
    }

    /// <summary>
    /// A probe's outcome: when gcc compiled it, what it printed (each stdout line "key value");
    /// always gcc's diagnostics and the path of the C source (kept only when gcc failed).
    /// </summary>
    public sealed record ProbeResult(bool Compiled, Dictionary<string, string> Values, string GccStderr, string SourcePath);

    /// <summary>
    /// Compiles <paramref name="source"/> against the UAPI headers and, if gcc accepts it, runs it.
    /// A compile failure is returned (the caller attributes gcc's errors); a crash of the probe fails the test.
    /// </summary>
    public static ProbeResult CompileAndRun(string name, string source, string[] extraGccArgs)
    {
        string[] includeArgs = s_gccIncludeArgs.Value;
        string tmp = Directory.CreateTempSubdirectory("ublk-abi-").FullName;
        bool keep = true;
        try
        {
            string c = Path.Combine(tmp, name + ".c");
            string exe = Path.Combine(tmp, name);
            File.WriteAllText(c, source);

            var cc = RunGcc([.. includeArgs, "-std=gnu11", "-Wall", .. extraGccArgs, "-o", exe, c], tmp);
            var values = new Dictionary<string, string>(StringComparer.Ordinal);
            if (cc.ExitCode != 0)
                return new ProbeResult(false, values, cc.Stderr, c);

            var run = Run(exe, [], tmp, TimeSpan.FromMinutes(1));
            if (run.ExitCode != 0)
                Assert.Fail($"ABI probe {exe} exited with {run.ExitCode}.\n{run.Stderr}");

            foreach (string line in run.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                int sp = line.LastIndexOf(' ');
                if (sp <= 0)
                    Assert.Fail($"ABI probe {exe} printed an unparsable line: '{line}'");
                values[line[..sp]] = line[(sp + 1)..];
            }
            keep = false;
            return new ProbeResult(true, values, cc.Stderr, c);
        }
        finally
        {
            if (!keep)
            {
                try { Directory.Delete(tmp, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            }
        }
    }

    public static string Truncate(string s, int max) => s.Length <= max ? s : s[..max] + "\n...";

    /// <summary>gcc's version line, for test output.</summary>
    public static string GccVersion() => RunGcc(["--version"], Path.GetTempPath()).Stdout.Split('\n')[0].Trim();

    private static ProcessResult RunGcc(string[] args, string cwd)
    {
        try
        {
            return Run("gcc", args, cwd, TimeSpan.FromMinutes(2));
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            Assert.Fail($"gcc is required to check the ABI against the kernel headers but could not be started: {e.Message}");
            throw;
        }
    }

    internal readonly record struct ProcessResult(int ExitCode, string Stdout, string Stderr);

    internal static ProcessResult Run(string file, string[] args, string cwd, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo(file)
        {
            WorkingDirectory = cwd,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (string a in args)
            psi.ArgumentList.Add(a);
        psi.Environment["LC_ALL"] = "C";

        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {file}");
        p.StandardInput.Close();
        Task<string> stdout = p.StandardOutput.ReadToEndAsync();
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            Assert.Fail($"{file} {string.Join(' ', args)} did not finish within {timeout}.");
        }
        p.WaitForExit();
        return new ProcessResult(p.ExitCode, stdout.GetAwaiter().GetResult(), stderr.GetAwaiter().GetResult());
    }
}
