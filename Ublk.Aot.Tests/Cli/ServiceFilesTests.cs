using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using Xunit;

namespace Ublk.Aot.Tests.Cli;

/// <summary>
/// `ublk-aot install` into a temporary prefix, the unit checked by the real `systemd-analyze verify`, and the udev
/// rule's helper `udev-name`. Host tests: the real static binary, the real systemd tools (no ublk needed).
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class ServiceFilesTests : IDisposable
{
    private static readonly string Binary = Path.Combine(Integration.IntegrationEnv.RepoRoot, "out", "ublk-aot");
    private static readonly string Dist = Path.Combine(Integration.IntegrationEnv.RepoRoot, "dist");
    private readonly string _prefix = Directory.CreateTempSubdirectory("ublk-aot-install-").FullName;

    public void Dispose() => Directory.Delete(_prefix, recursive: true);

    internal static (int Code, string Out, string Err) Run(string file, IEnumerable<string> args, params (string Name, string Value)[] env)
    {
        Assert.True(File.Exists(file), "missing " + file + (file == Binary ? ": run ./build.sh first" : ""));
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in args) psi.ArgumentList.Add(a);
        foreach ((string n, string v) in env) psi.Environment[n] = v;
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string o = p.StandardOutput.ReadToEnd();
        Assert.True(p.WaitForExit(60_000), file + " " + string.Join(" ", args) + " did not exit");
        return (p.ExitCode, o, err.Result);
    }

    private (int Code, string Out, string Err) Install(params string[] extra) => Run(Binary, ["install", "--prefix", _prefix, .. extra]);

    private static readonly (string Dist, string Installed)[] Files =
    [
        ("ublk-aot@.service", "etc/systemd/system/ublk-aot@.service"),
        ("60-ublk-aot.rules", "etc/udev/rules.d/60-ublk-aot.rules"),
        ("modprobe.d/ublk-aot.conf", "etc/modprobe.d/ublk-aot.conf"),
        ("modules-load.d/ublk-aot.conf", "etc/modules-load.d/ublk-aot.conf"),
        ("ublk-aot.conf.example", "etc/ublk-aot/ublk-aot.conf.example"),
    ];

    [Fact]
    public void Install_writes_the_dist_files_and_the_binary_then_is_idempotent_and_refuses_a_changed_file()
    {
        var first = Install();
        Assert.True(first.Code == 0, "install: " + first);
        foreach ((string dist, string installed) in Files)
        {
            string path = Path.Combine(_prefix, installed);
            Assert.True(File.Exists(path), path + " was not installed: " + first.Out);
            Assert.Equal(File.ReadAllBytes(Path.Combine(Dist, dist)), File.ReadAllBytes(path));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead, File.GetUnixFileMode(path));
            Assert.Contains("installed " + path, first.Out);
        }
        string bin = Path.Combine(_prefix, "usr/local/sbin/ublk-aot");
        Assert.Equal(File.ReadAllBytes(Binary), File.ReadAllBytes(bin));
        Assert.True((File.GetUnixFileMode(bin) & UnixFileMode.OtherExecute) != 0, "the installed binary is not executable");

        var again = Install();
        Assert.True(again.Code == 0, "second install: " + again);
        Assert.DoesNotContain("installed", again.Out);
        Assert.Equal(Files.Length + 1, again.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
        Assert.All(again.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => Assert.StartsWith("unchanged ", l));

        // An edited rule and a removed modprobe file: refused as a whole, nothing is written (the removed file stays away).
        string rule = Path.Combine(_prefix, "etc/udev/rules.d/60-ublk-aot.rules");
        string modprobe = Path.Combine(_prefix, "etc/modprobe.d/ublk-aot.conf");
        File.AppendAllText(rule, "# a local change\n");
        File.Delete(modprobe);
        var refused = Install();
        Assert.True(refused.Code == 2, "a changed file was overwritten: " + refused);
        Assert.Single(refused.Err.Trim().Split('\n'));
        Assert.Contains(rule + " differs from this ublk-aot's copy", refused.Err);
        Assert.Contains("nothing was written; --force replaces it", refused.Err);
        Assert.EndsWith("# a local change\n", File.ReadAllText(rule));
        Assert.False(File.Exists(modprobe), "a refused install wrote " + modprobe);

        var forced = Install("--force");
        Assert.True(forced.Code == 0, "install --force: " + forced);
        Assert.Contains("replaced  " + rule, forced.Out);
        Assert.Contains("installed " + modprobe, forced.Out);
        Assert.Equal(File.ReadAllBytes(Path.Combine(Dist, "60-ublk-aot.rules")), File.ReadAllBytes(rule));
        Assert.Empty(Directory.GetFiles(_prefix, "*.ublk-aot-install.*", SearchOption.AllDirectories));
    }

    [Theory]
    [InlineData("--prefix", "install: --prefix needs a directory")]
    [InlineData("--prefix /nonexistent/ublk-aot-root", "install: --prefix /nonexistent/ublk-aot-root: no such directory")]
    [InlineData("--frobnicate", "install: unexpected argument '--frobnicate'")]
    public void Install_refuses_bad_arguments_in_one_line(string args, string message)
    {
        var r = Run(Binary, ["install", .. args.Split(' ')]);
        Assert.True(r.Code == 2, "install " + args + ": " + r);
        Assert.Equal("ublk-aot: " + message, r.Err.Trim());
    }

    /// <summary>
    /// systemd-analyze verify, run on the installed unit with the prefix as its root (the host's own units are
    /// linked in for the dependencies, so sysinit.target and friends resolve; ExecStart's binary is the installed
    /// copy, which verify checks for). Any line about our unit fails the test: verify exits 0 on unknown keys and
    /// on values it ignores, so the exit code alone would not catch a typo. The second half proves that: the same
    /// check on a copy with an unknown key must fail.
    /// </summary>
    [Fact]
    public void Systemd_analyze_verify_accepts_the_unit_without_a_warning()
    {
        var inst = Install();
        Assert.True(inst.Code == 0, "install: " + inst);
        Assert.True(Directory.Exists("/lib/systemd/system"), "the host has no /lib/systemd/system (scripts/vm-setup.sh installs systemd)");
        Directory.CreateDirectory(Path.Combine(_prefix, "usr/lib/systemd"));
        File.CreateSymbolicLink(Path.Combine(_prefix, "usr/lib/systemd/system"), "/lib/systemd/system");

        var ok = Verify();
        Assert.True(ok.Code == 0 && ok.Err.Trim().Length == 0 && ok.Out.Trim().Length == 0,
            "systemd-analyze verify of ublk-aot@test.service: exit " + ok.Code + "\n" + ok.Out + ok.Err);

        // The check can fail: an unknown key, an unparsable value and a missing binary are each reported.
        string unit = Path.Combine(_prefix, "etc/systemd/system/ublk-aot@.service");
        File.WriteAllText(unit, File.ReadAllText(unit).Replace("NoNewPrivileges=yes\n", "NoNewPrivileges=yes\nFrobnicate=1\nProtectSystem=sideways\n"));
        File.Delete(Path.Combine(_prefix, "usr/local/sbin/ublk-aot"));
        var bad = Verify();
        Assert.Contains("Unknown key 'Frobnicate'", bad.Err);
        Assert.Contains("sideways", bad.Err);
        Assert.Contains("/usr/local/sbin/ublk-aot is not executable", bad.Err);
    }

    private (int Code, string Out, string Err) Verify()
    {
        string tool = File.Exists("/usr/bin/systemd-analyze") ? "/usr/bin/systemd-analyze" : "/bin/systemd-analyze";
        Assert.True(File.Exists(tool), "systemd-analyze is missing (package systemd; scripts/vm-setup.sh installs it)");
        return Run(tool, ["verify", "--root=" + _prefix, "--man=no", "ublk-aot@test.service"]);
    }

    [Fact]
    public void Udev_name_prints_the_name_file_of_a_disk_and_of_its_partitions()
    {
        string state = Directory.CreateDirectory(Path.Combine(_prefix, "run")).FullName;
        File.WriteAllText(Path.Combine(state, "7.name"), "data-disk\n");
        File.WriteAllText(Path.Combine(state, "8.name"), "bad name; rm -rf /\n");
        (string, string) env = ("UBLK_AOT_STATE_DIR", state);

        Assert.Equal((0, "UBLK_AOT_NAME=data-disk\n", ""), Run(Binary, ["udev-name", "ublkb7"], env));
        Assert.Equal((0, "UBLK_AOT_NAME=data-disk\n", ""), Run(Binary, ["udev-name", "ublkb7p12"], env));
        Assert.Equal((0, "", ""), Run(Binary, ["udev-name", "ublkb9"], env)); // no config, no name
        Assert.Equal((0, "", ""), Run(Binary, ["udev-name", "ublkb8"], env)); // not a valid name: never printed
        foreach (string bad in new[] { "sda", "ublkb", "ublkbx", "ublkb7p", "ublkb7q1", "ublkb-1", "ublkb99999999999" })
        {
            var r = Run(Binary, ["udev-name", bad], env);
            Assert.True(r.Code == 2 && r.Out.Length == 0 && r.Err.Contains("udev-name: expected a ublk disk's kernel name"), bad + ": " + r);
        }
    }
}
