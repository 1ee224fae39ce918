using System.IO;
using Xunit;

namespace Ublk.Aot.Tests.Cli;

/// <summary>
/// `serve --config FILE` on the real binary: each refusal is one line naming FILE:LINE (or FILE for what is missing),
/// exit 2, before anything touches the kernel (the host has no ublk: nothing could be touched anyway).
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class ServeConfigTests : System.IDisposable
{
    private static readonly string Binary = Path.Combine(Integration.IntegrationEnv.RepoRoot, "out", "ublk-aot");
    private readonly string _dir = Directory.CreateTempSubdirectory("ublk-aot-conf-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private (int Code, string Out, string Err, string File) Serve(string text, string name = "disk0.conf")
    {
        string file = Path.Combine(_dir, name);
        File.WriteAllText(file, text);
        var r = ServiceFilesTests.Run(Binary, ["serve", "--config", file]);
        return (r.Code, r.Out, r.Err, file);
    }

    private const string Good = "# a device\nbackend=file:/nonexistent/ublk-aot.img\n\nid=3\n";

    [Theory]
    [InlineData(Good + "colour=red\n", 5, "unknown key 'colour'")]
    [InlineData(Good + "--queues=2\n", 5, "unknown key '--queues'")]
    [InlineData(Good + "config=/etc/x.conf\n", 5, "unknown key 'config'")]
    [InlineData(Good + "queues=0\n", 5, "queues: --queues must be a number between 1 and 4096, got '0'")]
    [InlineData(Good + "queues=2\ndepth=64\nqueues=4\n", 7, "duplicate key 'queues' (first on line 5)")]
    [InlineData(Good + "id=4\n", 5, "duplicate key 'id' (first on line 4)")]
    [InlineData(Good + "read-only=maybe\n", 5, "read-only must be yes or no, got 'maybe'")]
    [InlineData(Good + "read-only\n", 5, "expected KEY=VALUE, got 'read-only'")]
    [InlineData(Good + "=3\n", 5, "expected KEY=VALUE, got '=3'")]
    [InlineData(Good + "recovery=sometimes\n", 5, "recovery: --recovery must be reissue, fail-io or off, got 'sometimes'")]
    [InlineData(Good + "io-mode=fast\n", 5, "io-mode: --io-mode must be auto, copy, user-copy, zero-copy, auto-buf-reg, got 'fast'")]
    [InlineData(Good + "max-io=1000\n", 5, "max-io: --max-io must be a multiple of 4096")]
    [InlineData(Good + "cpus=0-x\n", 5, "cpus: --cpus expects a list like 0,2-3, got '0-x'")]
    [InlineData(Good + "id=\n", 5, "duplicate key 'id'")]
    [InlineData("id=3\n  backend = file:/nonexistent/ublk-aot.img  \n", 2, "backing file not found: /nonexistent/ublk-aot.img")]
    [InlineData("id=3\nbackend=bogus:1G\n", 2, "unknown backend 'bogus:1G'")]
    [InlineData("id=3\nbackend=mem:1G\nrecovery=reissue\n", 0, "--recovery: this backend's data lives in the server process")]
    [InlineData("id=3\nbackend=null:1G\nblock-size=1024\n", -1, "--block-size must be 512 or 4096")]
    [InlineData("backend=null:1G\n", -1, "id= is required")]
    [InlineData("id=3\n# backend=null:1G\n", -1, "backend= is required")]
    [InlineData("id=-1\nbackend=null:1G\n", 1, "id: --id must be a number between 0")]
    public void A_bad_config_is_one_line_naming_the_file_and_line_exit_2(string text, int line, string message)
    {
        var r = Serve(text);
        Assert.True(r.Code == 2, "exit " + r.Code + ", stderr: " + r.Err);
        Assert.Single(r.Err.Trim().Split('\n'));
        // line > 0: FILE:LINE; -1: FILE alone (the whole file is at fault); 0: a refusal after the parse (not a line's).
        if (line > 0) Assert.StartsWith("ublk-aot: " + r.File + ":" + line + ": ", r.Err);
        else if (line < 0) Assert.StartsWith("ublk-aot: " + r.File + ": ", r.Err);
        Assert.Contains(message, r.Err);
        Assert.Empty(r.Out);
    }

    [Fact]
    public void Switches_comments_and_blanks_are_read_and_the_file_is_all_of_the_options()
    {
        // Parses through to the backend (which then refuses recovery for mem): every line above it was accepted.
        var r = Serve("  # comment\n\nbackend = mem:64M\nid=9\nread-only=no\nfixed-buffers=yes\nhuge-buffers=no\nqueues=1\ndepth=16\n" +
                      "max-io=256K\nidle-release=0\npoll=50\nio-mode=copy\nno-partition-scan=no\nstats=yes\nblock-size=4096\nrecovery=reissue\n" +
                      "metrics=unix:" + Path.Combine(_dir, "metrics.sock") + "\n");
        Assert.True(r.Code == 2 && r.Err.Contains("--recovery: this backend's data lives in the server process"), r.Err);

        string file = Path.Combine(_dir, "x.conf");
        File.WriteAllText(file, Good);
        foreach (string[] args in new[] { new[] { "serve", "--config", file, "--queues", "2" }, new[] { "serve", "--queues", "2", "--config", file } })
        {
            var extra = ServiceFilesTests.Run(Binary, args);
            Assert.True(extra.Code == 2, string.Join(" ", args) + ": " + extra);
            Assert.Equal("ublk-aot: serve: --config FILE takes no other serve options: put them in FILE as KEY=VALUE lines", extra.Err.Trim());
        }
        var missing = ServiceFilesTests.Run(Binary, ["serve", "--config", Path.Combine(_dir, "none.conf")]);
        Assert.True(missing.Code == 2 && missing.Err.StartsWith("ublk-aot: serve: cannot read config " + Path.Combine(_dir, "none.conf") + ":"), missing.Err);
        var noValue = ServiceFilesTests.Run(Binary, ["serve", "--config"]);
        Assert.True(noValue.Code == 2 && noValue.Err.Contains("serve: --config needs a value"), noValue.Err);
        var badName = Serve(Good, "my disk.conf");
        Assert.True(badName.Code == 2 && badName.Err.Contains("the device name 'my disk' (the file name without .conf) must be"), badName.Err);
        // recover has no --config (it serves a device by id, from its state file).
        var recover = ServiceFilesTests.Run(Binary, ["recover", "3", "--config", file]);
        Assert.True(recover.Code == 2 && recover.Err.Contains("unknown option '--config'"), recover.Err);
    }
}
