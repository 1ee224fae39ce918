using System;
using System.Diagnostics;
using System.IO;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Xunit;
using Xunit.Abstractions;
using static Ublk.Aot.Tests.Integration.IntegrationEnv;

namespace Ublk.Aot.Tests.Integration;

/// <summary>
/// The unit's life cycle without systemd as PID 1 (the VM has none): the test plays the service manager. It binds
/// the notify socket (a real AF_UNIX datagram socket), runs the unit's ExecStart line (`serve --config FILE`) with
/// NOTIFY_SOCKET set, waits for READY=1, SIGKILLs the server as a crash would, runs the same line again as
/// Restart=on-failure does, and stops it with SIGTERM as `systemctl stop` does. The udev rule is the installed one
/// (from `ublk-aot install`), loaded from /run/udev/rules.d for this test only.
/// </summary>
[Collection(UblkCollection.Name), Trait("Category", "Integration")]
public sealed class ServiceTests(ITestOutputHelper output)
{
    private const int Id = 41;
    private const string Name = "svc-test";

    private sealed class NotifySocket : IDisposable
    {
        private readonly Socket _s;
        public string Path { get; }

        public NotifySocket(string path)
        {
            Path = path;
            File.Delete(path);
            _s = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
            _s.Bind(new UnixDomainSocketEndPoint(path));
        }

        /// <summary>The next datagram, within <paramref name="timeoutMs"/> (fails the test otherwise).</summary>
        public string Next(int timeoutMs, string waitingFor)
        {
            _s.ReceiveTimeout = timeoutMs;
            var buf = new byte[4096];
            try { return Encoding.UTF8.GetString(buf, 0, _s.Receive(buf)); }
            catch (SocketException e) { Assert.Fail("no notification (" + waitingFor + ") within " + timeoutMs + " ms: " + e.SocketErrorCode); return ""; }
        }

        public void Dispose() => _s.Dispose();
    }

    [Fact]
    public void The_units_ExecStart_notifies_recovers_after_SIGKILL_with_its_data_and_stop_deletes_the_device()
    {
        Require();
        AssertNoDevices();
        string dir = TempDir("service");
        string img = Path.Combine(dir, "disk.img");
        File.Delete(img);
        string conf = Path.Combine(dir, Name + ".conf");
        File.WriteAllText(conf, "# written by ServiceTests\nbackend=file:" + img + ",size=64M\nid=" + Id + "\nrecovery=reissue\nqueues=2\n");

        // The installed rule, pointed at the installed copy of the binary (the guest's /usr is not ours to change).
        string prefix = Directory.CreateDirectory(Path.Combine(dir, "root")).FullName;
        Result inst = UblkAot("install --prefix " + prefix);
        Assert.True(inst.Code == 0, "install: " + inst);
        string installed = Path.Combine(prefix, "usr/local/sbin/ublk-aot");
        string rule = File.ReadAllText(Path.Combine(prefix, "etc/udev/rules.d/60-ublk-aot.rules")).Replace("/usr/local/sbin/ublk-aot", installed);
        Directory.CreateDirectory("/run/udev/rules.d");
        const string ruleAt = "/run/udev/rules.d/60-ublk-aot.rules";
        File.WriteAllText(ruleAt, rule);
        Sh("udevadm control --reload");

        string link = "/dev/disk/by-ublk/" + Name;
        string dev = "/dev/ublkb" + Id;
        (string, string) notifyEnv = ("NOTIFY_SOCKET", Path.Combine(dir, "notify"));
        string execStart = "serve --config " + conf;
        using var notify = new NotifySocket(notifyEnv.Item2);
        ServerProcess? s = null;
        try
        {
            var sw = Stopwatch.StartNew();
            s = ServerProcess.StartCommand(execStart, 60_000, notifyEnv);
            string ready = notify.Next(30_000, "READY=1");
            output.WriteLine("first start: " + sw.ElapsedMilliseconds + " ms; " + ready.Replace('\n', '|'));
            Assert.StartsWith("READY=1\nSTATUS=serving " + dev + " from file:" + img, ready);
            Assert.Contains("recovery reissue", ready);
            Assert.Equal(dev, s.DevicePath);
            Assert.Equal(Name + "\n", File.ReadAllText("/run/ublk-aot/" + Id + ".name"));
            Sh("udevadm settle -t 30", 60_000, check: false);
            AssertLink(link, dev);

            var data = new byte[2 << 20];
            new Random(41).NextBytes(data);
            using (var bd = new BlockDevice(dev)) bd.Write(data, 4 << 20);

            // A crash: SIGKILL. The device waits (QUIESCED); the unit's restart runs the same line again.
            RecoveryTests.KillUntilQuiesced(s, Id);
            s.DisposeKeepingDevice();
            sw.Restart();
            s = ServerProcess.StartCommand(execStart, 90_000, notifyEnv);
            string again = notify.Next(30_000, "READY=1 after the restart");
            output.WriteLine("restart (recovery): " + sw.ElapsedMilliseconds + " ms; " + again.Replace('\n', '|'));
            Assert.StartsWith("READY=1\nSTATUS=recovered and serving " + dev + " from file:" + img, again);
            Assert.Equal(dev, s.DevicePath);
            RecoveryTests.AssertSays(s, "recovered " + dev);
            JsonElement e = RecoveryTests.WaitState(Id, "LIVE");
            Assert.True(e.GetProperty("server_alive").GetBoolean(), e.ToString());
            using (var bd = new BlockDevice(dev))
            {
                byte[] got = bd.Read(data.Length, 4 << 20);
                Assert.True(data.AsSpan().SequenceEqual(got), BlockDevice.Diff(dev, 4 << 20, data, got));
            }
            Sh("udevadm settle -t 30", 60_000, check: false);
            AssertLink(link, dev);

            // systemctl stop: SIGTERM. STOPPING=1 first, then the device, its state and name files and the link go.
            Assert.Equal(0, s.Stop());
            string stopping = notify.Next(10_000, "STOPPING=1");
            Assert.StartsWith("STOPPING=1\nSTATUS=signal received; stopping " + dev, stopping);
            Assert.True(WaitGone((uint)Id), "device " + Id + " still exists after the stop: " + string.Join(", ", KernelDevices()));
            Assert.False(File.Exists("/run/ublk-aot/" + Id + ".json"), "the state file outlived the stop");
            Assert.False(File.Exists("/run/ublk-aot/" + Id + ".name"), "the name file outlived the stop");
            Sh("udevadm settle -t 30", 60_000, check: false);
            Assert.False(File.Exists(link), link + " outlived the device");
        }
        finally
        {
            s?.Dispose();
            if (Directory.Exists("/sys/class/ublk-char/ublkc" + Id)) UblkAot("del " + Id);
            File.Delete(ruleAt);
            Sh("udevadm control --reload", 60_000, check: false);
        }
        AssertNoDevices();
    }

    /// <summary>Without NOTIFY_SOCKET the server sends nothing and runs as before; with a socket nobody reads, it says so once and serves.</summary>
    [Fact]
    public void A_notify_socket_nobody_listens_on_costs_one_line_and_nothing_else()
    {
        Require();
        AssertNoDevices();
        string dir = TempDir("service-nobody");
        using (ServerProcess s = ServerProcess.StartCommand("serve --backend null:16M", 60_000, ("NOTIFY_SOCKET", Path.Combine(dir, "nobody"))))
        {
            RecoveryTests.AssertSays(s, "cannot notify the service manager at NOTIFY_SOCKET=" + Path.Combine(dir, "nobody"));
            Assert.Equal(0, s.Stop());
            Assert.Single(s.Stderr.Split('\n'), l => l.Contains("cannot notify"));
        }
        AssertNoDevices();
    }

    private static void AssertLink(string link, string dev)
    {
        var sw = Stopwatch.StartNew();
        while (!File.Exists(link) && sw.ElapsedMilliseconds < 20_000) System.Threading.Thread.Sleep(100);
        string? target = File.Exists(link) ? new FileInfo(link).ResolveLinkTarget(returnFinalTarget: true)?.FullName : null;
        Assert.True(target == dev, link + " -> " + (target ?? "missing") + ", expected " + dev + "; udev: " +
            Sh("udevadm info --query=all --name=" + dev + " 2>&1 | head -40", 30_000, check: false).Out);
    }

    private static bool WaitGone(uint id)
    {
        var sw = Stopwatch.StartNew();
        while (Directory.Exists("/sys/class/ublk-char/ublkc" + id) && sw.ElapsedMilliseconds < 15_000) System.Threading.Thread.Sleep(50);
        return !Directory.Exists("/sys/class/ublk-char/ublkc" + id);
    }
}
