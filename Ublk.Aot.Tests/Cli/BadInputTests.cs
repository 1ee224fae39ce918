using System.Diagnostics;
using System.IO;
using Xunit;

namespace Ublk.Aot.Tests.Cli;

/// <summary>
/// Bad input to the static binary: one clear line on stderr, exit code 2, before anything touches the kernel.
/// These run on the host (no ublk needed); errors that need the kernel are in Integration/EnvironmentErrorTests.
/// </summary>
public sealed class BadInputTests
{
    private static readonly string Binary = Path.Combine(Integration.IntegrationEnv.RepoRoot, "out", "ublk-aot");

    private static (int Code, string Out, string Err) Run(string args)
    {
        Assert.True(File.Exists(Binary), "missing " + Binary + ": run ./build.sh first");
        var psi = new ProcessStartInfo(Binary, args) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        string o = p.StandardOutput.ReadToEnd();
        string e = p.StandardError.ReadToEnd();
        Assert.True(p.WaitForExit(30_000), "ublk-aot " + args + " did not exit");
        return (p.ExitCode, o, e);
    }

    [Theory]
    [InlineData("serve", "serve: --backend SPEC is required")]
    [InlineData("serve --backend bogus:1G", "unknown backend 'bogus:1G'")]
    [InlineData("serve --backend mem", "backend mem: needs a size")]
    [InlineData("serve --backend mem:0", "backend mem: size must be greater than 0")]
    [InlineData("serve --backend mem:12Q", "invalid mem size '12Q'")]
    [InlineData("serve --backend null:1000", "the backend size 1000 is not a multiple of the block size 512")]
    [InlineData("serve --backend mem:6K --block-size 4096", "the backend size 6144 is not a multiple of the block size 4096")]
    [InlineData("serve --backend mem:1G --block-size 1024", "--block-size must be 512 or 4096")]
    [InlineData("serve --backend mem:1G --queues 0", "--queues must be a number between 1 and 4096")]
    [InlineData("serve --backend mem:1G --queues 5000", "--queues must be a number between 1 and 4096")]
    [InlineData("serve --backend mem:1G --depth 0", "--depth must be a number between 1 and 4096")]
    [InlineData("serve --backend mem:1G --depth 4097", "--depth must be a number between 1 and 4096")]
    [InlineData("serve --backend mem:1G --depth", "serve: --depth needs a value")]
    [InlineData("serve --backend mem:1G --max-io 1000", "--max-io must be a multiple of 4096")]
    [InlineData("serve --backend mem:1G --max-io 64M", "--max-io must be a multiple of 4096")]
    [InlineData("serve --backend mem:1G --id -3", "--id must be a number between 0")]
    [InlineData("serve --backend mem:1G --cpus 0-x", "--cpus expects a list like 0,2-3")]
    [InlineData("serve --backend mem:1G --cpus 4096", "--cpus names CPU 4096")]
    [InlineData("serve --backend mem:1G --idle-release 2m", "--idle-release must be a number between 0 and 86400")]
    [InlineData("serve --backend mem:1G --idle-release -1", "--idle-release must be a number between 0 and 86400")]
    [InlineData("serve --backend mem:1G --poll 20000", "--poll must be a number between 0 and 10000, got '20000'")]
    [InlineData("serve --backend mem:1G --poll 5us", "--poll must be a number between 0 and 10000, got '5us'")]
    [InlineData("serve --backend mem:1G --io-mode fast", "--io-mode must be auto, copy, user-copy, zero-copy, auto-buf-reg, got 'fast'")]
    [InlineData("serve --backend mem:1G --io-mode", "serve: --io-mode needs a value")]
    [InlineData("serve --backend mem:1G --frobnicate", "serve: unknown option '--frobnicate'")]
    [InlineData("serve --backend file:/nonexistent/disk.img", "backing file not found: /nonexistent/disk.img")]
    [InlineData("serve --backend file:/dev/null", "backing file /dev/null is not a regular file or block device")]
    [InlineData("serve --backend file:/proc", "cannot open backing file /proc: EISDIR")]
    [InlineData("serve --backend file:", "backend file: needs a path")]
    [InlineData("serve --backend file:/x,size=1G,colour=red", "backend file: unknown option 'colour'")]
    [InlineData("serve --backend fault:mem:1G", "backend fault: expected key=value, got 'mem'")]
    [InlineData("serve --backend fault:rate=2:mem:1G", "backend fault: rate must be a number between 0 and 1")]
    [InlineData("serve --backend fault:rate=0.1,ops=scribble:mem:1G", "backend fault: unknown op 'scribble'")]
    [InlineData("serve --backend fault:rate=0.1:fault:rate=1:mem:1G", "backend fault: cannot wrap")]
    [InlineData("frobnicate", "unknown command 'frobnicate'")]
    [InlineData("del", "del: expected one device id, --all or --dead")]
    [InlineData("del abc", "del: 'abc' is not a device id")]
    [InlineData("serve --backend mem:1G --recovery maybe", "serve: --recovery must be reissue, fail-io or off, got 'maybe'")]
    [InlineData("serve --backend mem:1G --recovery reissue", "--recovery: this backend's data lives in the server process")]
    [InlineData("recover", "recover: expected a device id")]
    [InlineData("recover abc", "recover: expected a device id, got 'abc'")]
    [InlineData("recover 7 --queues 2", "recover: --queues needs --backend SPEC")]
    [InlineData("recover 4321", ".json for ublk device 4321: give --backend SPEC")]
    [InlineData("features --yaml", "features: unknown option '--yaml'")]
    [InlineData("list --xml", "list: unknown option '--xml'")]
    [InlineData("list --timeout", "--timeout needs a value (seconds)")]
    [InlineData("list --timeout 1.5", "--timeout must be a number between 0 and 86400, got '1.5'")]
    [InlineData("serve --backend mem:1G --timeout 99999", "--timeout must be a number between 0 and 86400, got '99999'")]
    [InlineData("upgrade", "upgrade: expected a device id")]
    [InlineData("upgrade x1", "upgrade: expected a device id, got 'x1'")]
    [InlineData("upgrade 3 --binary", "upgrade: --binary needs a value (PATH)")]
    [InlineData("upgrade 3 --queues 2", "upgrade: unknown option '--queues'")]
    [InlineData("upgrade 3 --binary /nonexistent/ublk-aot", "upgrade: /nonexistent/ublk-aot: no such file")]
    [InlineData("upgrade 3 --binary /proc/version", "upgrade: /proc/version is not executable")]
    [InlineData("upgrade 3 --binary /bin/false", "/bin/false --version gave exit 1 and 'false (GNU coreutils)")]
    [InlineData("upgrade 3 --binary /bin/true", "/bin/true --version gave exit 0 and 'true (GNU coreutils)")]
    [InlineData("resize", "resize: expected a device id and a size, e.g. resize 0 2G")]
    [InlineData("resize 3", "resize: expected a device id and a size")]
    [InlineData("resize 3 1G 2G", "resize: unexpected argument '2G'")]
    [InlineData("resize x3 1G", "resize: 'x3' is not a device id")]
    [InlineData("resize -1 1G", "resize: '-1' is not a device id")]
    [InlineData("resize 3 lots", "resize: invalid size 'lots': expected a number with an optional K/M/G/T suffix")]
    [InlineData("resize 3 1.5G", "resize: invalid size '1.5G'")]
    [InlineData("resize 3 0", "resize: the size must be a positive multiple of 512 bytes, got 0")]
    [InlineData("resize 3 1000", "resize: the size must be a positive multiple of 512 bytes, got 1000")]
    [InlineData("del --safe", "del --safe: expected one device id")]
    [InlineData("del --safe 3 4", "del: unexpected argument '4'")]
    [InlineData("del --safe --safe", "del: --safe given twice")]
    [InlineData("del --safe abc", "del --safe: 'abc' is not a device id")]
    [InlineData("del --safe --all", "del --safe: '--all' is not a device id")]
    [InlineData("del --dead --safe", "del --safe: '--dead' is not a device id")]
    [InlineData("serve --backend mem:1G --no-partition-scan --recovery reissue", "--recovery: this backend's data lives in the server process")]
    [InlineData("serve --backend mem:1G --no-partition-scan=yes", "serve: unknown option '--no-partition-scan=yes'")]
    [InlineData("serve --no-partition-scan", "serve: --backend SPEC is required")]
    [InlineData("serve --backend mem:1G --metrics", "serve: --metrics needs a value")]
    [InlineData("serve --backend mem:1G --metrics 127.0.0.1:0", "port 0 (any free port) is refused")]
    [InlineData("serve --backend mem:1G --metrics 9101", "--metrics must be unix:PATH or IP:PORT (e.g. 127.0.0.1:9101, [::1]:9101; port 1-65535), got '9101'")]
    [InlineData("serve --backend mem:1G --metrics localhost:9101", "'localhost' is not an IPv4 address")]
    [InlineData("serve --backend mem:1G --metrics unix:", "got 'unix:': no path")]
    [InlineData("serve --backend mem:1G --metrics 10.255.255.254:9101", "serve: --metrics 10.255.255.254:9101: no such local address")]
    [InlineData("serve --backend mem:1G --metrics unix:/nonexistent/dir/m.sock", "serve: --metrics unix:/nonexistent/dir/m.sock: no such directory")]
    [InlineData("recover 7 --metrics 127.0.0.1:0", "port 0 (any free port) is refused")]
    [InlineData("stats", "stats: expected one device id (and optionally --json)")]
    [InlineData("stats 1 2", "stats: unexpected argument '2'")]
    [InlineData("stats abc", "stats: 'abc' is not a device id")]
    [InlineData("stats --yaml", "stats: unknown option '--yaml'")]
    [InlineData("stats -1 --json", "stats: unexpected argument '-1'")]
    [InlineData("stats 4321 --json", "ublk device 4321 has no running ublk-aot server to ask")]
    // Issue 12: every malformed argument of every command, refused before any device is touched. The host has no
    // /dev/ublk-control: a command that reached the kernel would say so instead of the expected line.
    [InlineData("del 99999999999", "del: '99999999999' is not a device id")]
    [InlineData("del -1", "del: '-1' is not a device id")]
    [InlineData("del 2147483647", "del: '2147483647' is not a device id")]
    [InlineData("del 1 2", "del: unexpected argument '2'")]
    [InlineData("del --bogus", "del: unknown option '--bogus'")]
    [InlineData("del --all --all", "del: --all given twice")]
    [InlineData("del --all --dead", "del: expected one device id, --all or --dead")]
    [InlineData("del --safe 99999999999", "del --safe: '99999999999' is not a device id")]
    [InlineData("resize abc 1G", "resize: 'abc' is not a device id")]
    [InlineData("resize 0 12Q", "resize: invalid size '12Q'")]
    [InlineData("resize 0 -1G", "resize: invalid size '-1G'")]
    [InlineData("resize 99999999999 1G", "resize: '99999999999' is not a device id")]
    [InlineData("resize 0 1G --bogus", "resize: unknown option '--bogus'")]
    [InlineData("recover x", "recover: expected a device id, got 'x'")]
    [InlineData("recover -1", "recover: expected a device id, got '-1'")]
    [InlineData("recover 99999999999", "recover: expected a device id, got '99999999999'")]
    [InlineData("recover 1 2", "recover: unexpected argument '2'")]
    [InlineData("recover 1 --bogus", "recover: unknown option '--bogus'")]
    [InlineData("recover 1 --backend", "recover: --backend needs a value (SPEC)")]
    [InlineData("recover 1 --stats --stats", "recover: --stats given twice")]
    [InlineData("recover 1 --backend mem:1G --queues x", "serve: --queues must be a number between 1 and 4096")]
    [InlineData("upgrade x", "upgrade: expected a device id, got 'x'")]
    [InlineData("upgrade -1", "upgrade: expected a device id, got '-1'")]
    [InlineData("upgrade 1 2", "upgrade: unexpected argument '2'")]
    [InlineData("upgrade 1 --stats --stats", "upgrade: --stats given twice")]
    [InlineData("upgrade 1 --binary /bin/true --binary /bin/false", "upgrade: --binary given twice")]
    [InlineData("list --bogus", "list: unknown option '--bogus'")]
    [InlineData("list extra", "list: unexpected argument 'extra'")]
    [InlineData("list --json --json", "list: --json given twice")]
    [InlineData("list --json=yes", "list: unknown option '--json=yes'")]
    [InlineData("features extra", "features: unexpected argument 'extra'")]
    [InlineData("features --json --json", "features: --json given twice")]
    [InlineData("features -j", "features: unknown option '-j'")]
    [InlineData("serve extra --backend mem:1G", "serve: unexpected argument 'extra'")]
    [InlineData("serve --backend mem:1G --backend mem:2G", "serve: --backend given twice")]
    [InlineData("serve --backend mem:1G --queues 1 --queues 2", "serve: --queues given twice")]
    [InlineData("serve --backend mem:1G --read-only --read-only", "serve: --read-only given twice")]
    [InlineData("serve --backend", "serve: --backend needs a value (SPEC)")]
    [InlineData("serve --backend mem:1G -q 2", "serve: unknown option '-q'")]
    [InlineData("help bogus", "help: unknown command 'bogus'")]
    [InlineData("help serve list", "help: unexpected argument 'list'")]
    [InlineData("help --bogus", "help: unknown option '--bogus'")]
    [InlineData("--version extra", "--version: unexpected argument 'extra'")]
    [InlineData("--timeout 1 list --timeout 2", "--timeout given twice")]
    [InlineData("list --timeout -1", "--timeout must be a number between 0 and 86400, got '-1'")]
    public void Bad_input_is_one_line_and_exit_2(string args, string message)
    {
        var (code, stdout, stderr) = Run(args);
        Assert.True(code == 2, "ublk-aot " + args + ": exit " + code + " (expected 2)\nstderr: " + stderr);
        string err = stderr.Trim();
        Assert.False(err.Contains('\n'), "ublk-aot " + args + ": expected one line, got:\n" + err);
        Assert.StartsWith("ublk-aot: ", err);
        Assert.Contains(message, err);
        Assert.Equal("", stdout);
    }

    [Fact]
    public void A_metrics_port_in_use_is_one_line_exit_2_before_the_backing_file_is_made()
    {
        using var busy = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        busy.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        busy.Listen();
        int port = ((System.Net.IPEndPoint)busy.LocalEndPoint!).Port;
        string img = Path.Combine(Path.GetTempPath(), "ublk-metrics-busy-" + System.Guid.NewGuid().ToString("N")[..8] + ".img");
        var (code, stdout, stderr) = Run("serve --backend file:" + img + ",size=64M --metrics 127.0.0.1:" + port);
        Assert.True(code == 2, "exit " + code + "\n" + stderr);
        Assert.Equal("ublk-aot: serve: --metrics 127.0.0.1:" + port + ": address already in use", stderr.Trim());
        Assert.Equal("", stdout);
        Assert.False(File.Exists(img), "the backing file was created although --metrics could not be bound");
    }

    [Fact]
    public void Empty_file_needs_a_size()
    {
        string f = Path.GetTempFileName();
        try
        {
            var (code, _, err) = Run("serve --backend file:" + f);
            Assert.Equal(2, code);
            Assert.Contains("is empty: give a size", err);
        }
        finally { File.Delete(f); }
    }

    [Fact]
    public void Version_and_help()
    {
        var (code, o, _) = Run("--version");
        Assert.Equal(0, code);
        Assert.Equal("ublk-aot " + global::Ublk.Aot.Cli.CommandLine.Version, o.Trim());
        var (hcode, h, _) = Run("help");
        Assert.Equal(0, hcode);
        Assert.Contains("serve --backend SPEC", h);
        var (ncode, _, nerr) = Run("");
        Assert.Equal(2, ncode);
        Assert.Contains("usage: ublk-aot", nerr);
    }

    [Theory]
    [InlineData("4096", 4096UL)]
    [InlineData("64K", 65536UL)]
    [InlineData("64KiB", 65536UL)]
    [InlineData("1m", 1048576UL)]
    [InlineData("2G", 2147483648UL)]
    [InlineData("1T", 1099511627776UL)]
    [InlineData("512B", 512UL)]
    public void Sizes_parse(string text, ulong bytes)
    {
        Assert.True(global::Ublk.Aot.Ublk.Sizes.TryParse(text, out ulong v), text);
        Assert.Equal(bytes, v);
    }

    [Theory]
    [InlineData("")]
    [InlineData("K")]
    [InlineData("-1")]
    [InlineData("1.5G")]
    [InlineData("99999999999999999999")]
    [InlineData("20000000T")]
    public void Bad_sizes_are_rejected(string text) => Assert.False(global::Ublk.Aot.Ublk.Sizes.TryParse(text, out _), text);
}
