using System;
using System.Diagnostics;
using System.IO;
using System.Linq;
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

    /// <summary>
    /// The unit under a real systemd (252, the host's package): systemd runs as PID 1 of a new PID namespace in the VM
    /// (`unshare --pid --fork --mount-proc`), the only way to have one beside virtme's init, and is driven with
    /// `nsenter … systemctl`. The unit is the installed one, unchanged. `systemctl start` returns once READY=1 came;
    /// `systemctl kill -s KILL` is the crash; Restart=on-failure runs ExecStart again, which recovers the device
    /// (same id, the data written before the crash read back); `systemctl stop` deletes it. Units of sysinit.target
    /// that would disturb the rest of the VM run (a second udevd, tmpfiles' boot-time cleaning of /tmp) are masked.
    /// </summary>
    [Fact]
    public void Under_systemd_the_unit_starts_the_device_recovers_it_after_a_crash_with_its_data_and_stops_it()
    {
        Require();
        AssertNoDevices();
        const int id = 44;
        const string name = "sdtest";
        string unit = "ublk-aot@" + name + ".service";
        string dev = "/dev/ublkb" + id;
        string systemd = "/lib/systemd/systemd";
        Assert.True(File.Exists(systemd), "missing " + systemd + " (the systemd package; scripts/vm-setup.sh installs it)");
        string[] masked =
        [
            "systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket", "systemd-udev-trigger.service",
            "systemd-udev-settle.service", "systemd-tmpfiles-setup.service", "systemd-tmpfiles-setup-dev.service",
            "systemd-tmpfiles-clean.timer", "systemd-remount-fs.service", "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount",
        ];
        const string etc = "/etc/systemd/system";
        const string target = "ublk-aot-test.target";
        bool hadRunSystemd = Directory.Exists("/run/systemd");
        // In the VM /usr and /etc are RAM overlays: the install goes where a user's would, and vanishes with the VM.
        Result inst = UblkAot("install --force");
        Assert.True(inst.Code == 0, "install: " + inst);
        File.Delete("/etc/udev/rules.d/60-ublk-aot.rules"); // the other test covers udev; not for every later test
        Directory.CreateDirectory(etc);
        foreach (string m in masked) { File.Delete(Path.Combine(etc, m)); File.CreateSymbolicLink(Path.Combine(etc, m), "/dev/null"); }
        File.WriteAllText(Path.Combine(etc, target), "[Unit]\nDescription=ublk-aot test: nothing but what is started\n");
        string dataDir = Directory.CreateDirectory("/var/lib/ublk-aot-sdtest").FullName;
        string img = Path.Combine(dataDir, "disk.img");
        File.Delete(img);
        Directory.CreateDirectory("/etc/ublk-aot");
        string conf = "/etc/ublk-aot/" + name + ".conf";
        File.WriteAllText(conf, "backend=file:" + img + ",size=64M\nid=" + id + "\nrecovery=reissue\n");

        string log = Path.Combine(TempDir("service-systemd"), "systemd.log");
        var psi = new ProcessStartInfo("/usr/bin/unshare", "--pid --fork --mount-proc " + systemd + " --system --unit=" + target +
            " --log-target=console --log-color=no")
        { UseShellExecute = false, RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        using Process ns = Process.Start(psi)!;
        var sdlog = new StringBuilder();
        ns.OutputDataReceived += (_, a) => { if (a.Data != null) lock (sdlog) sdlog.AppendLine(a.Data); };
        ns.ErrorDataReceived += (_, a) => { if (a.Data != null) lock (sdlog) sdlog.AppendLine(a.Data); };
        ns.BeginOutputReadLine();
        ns.BeginErrorReadLine();
        int pid1 = 0;
        string Log() { lock (sdlog) return sdlog.ToString(); }
        Result Ctl(string args, bool check = true)
        {
            Result r = Run("/usr/bin/nsenter", "-t " + pid1 + " -p -m systemctl --no-pager " + args, 150_000);
            if (check) Assert.True(r.Code == 0, "systemctl " + args + ": " + r + "\nsystemd:\n" + Log());
            return r;
        }
        string Show(string prop) => Ctl("show -p " + prop + " --value " + unit).Out.Trim();
        try
        {
            var sw = Stopwatch.StartNew();
            string children = "/proc/" + ns.Id + "/task/" + ns.Id + "/children";
            while (pid1 == 0 && sw.ElapsedMilliseconds < 30_000)
            {
                string c = File.Exists(children) ? File.ReadAllText(children).Trim() : "";
                if (c.Length > 0) pid1 = int.Parse(c.Split(' ')[0]);
                else System.Threading.Thread.Sleep(50);
            }
            Assert.True(pid1 > 0, "systemd did not start under unshare: " + Log());
            string state = "";
            while (sw.ElapsedMilliseconds < 120_000)
            {
                state = Run("/usr/bin/nsenter", "-t " + pid1 + " -p -m systemctl is-system-running", 30_000).Out.Trim();
                if (state is "running" or "degraded") break;
                System.Threading.Thread.Sleep(250);
            }
            Assert.True(state is "running" or "degraded", "systemd is '" + state + "' after " + sw.ElapsedMilliseconds + " ms:\n" + Log());
            output.WriteLine("systemd up (" + state + ") in " + sw.ElapsedMilliseconds + " ms, pid " + pid1 + " (1 in its namespace)");

            // Type=notify: start returns when READY=1 has come, so the device is live now.
            sw.Restart();
            Ctl("start " + unit);
            output.WriteLine("systemctl start: " + sw.ElapsedMilliseconds + " ms; status: " + Show("StatusText"));
            Assert.StartsWith("serving " + dev + " from file:" + img, Show("StatusText"));
            Assert.True(File.Exists(dev), dev + " missing after start");
            Assert.Equal("ublk-aot", File.ReadAllText("/proc/" + HostPidOf(Show("MainPID"), pid1) + "/comm").Trim());
            var data = new byte[2 << 20];
            new Random(44).NextBytes(data);
            using (var bd = new BlockDevice(dev)) bd.Write(data, 4 << 20);

            // The crash, then Restart=on-failure (RestartSec=1s): the same ExecStart recovers device 44.
            sw.Restart();
            Ctl("kill -s KILL " + unit);
            string status = "";
            while (sw.ElapsedMilliseconds < 90_000)
            {
                status = Show("StatusText");
                if (Show("NRestarts") == "1" && Show("ActiveState") == "active" && status.StartsWith("recovered", StringComparison.Ordinal)) break;
                System.Threading.Thread.Sleep(200);
            }
            output.WriteLine("restart after SIGKILL: " + sw.ElapsedMilliseconds + " ms; status: " + status);
            Assert.True(status.StartsWith("recovered and serving " + dev, StringComparison.Ordinal),
                "no recovery by the restart: NRestarts=" + Show("NRestarts") + " ActiveState=" + Show("ActiveState") + " status '" + status + "'\n" +
                Ctl("status " + unit, check: false).Out + "\n" + Run("/usr/bin/nsenter", "-t " + pid1 + " -p -m journalctl --no-pager -u " + unit, 30_000).Out);
            using (var bd = new BlockDevice(dev))
            {
                byte[] got = bd.Read(data.Length, 4 << 20);
                Assert.True(data.AsSpan().SequenceEqual(got), BlockDevice.Diff(dev, 4 << 20, data, got));
            }

            // systemctl stop: SIGTERM, the device is deleted, the unit is inactive (not failed).
            Ctl("stop " + unit);
            Assert.Equal("inactive", Show("ActiveState"));
            Assert.True(WaitGone((uint)id), "device " + id + " still exists after systemctl stop: " + string.Join(", ", KernelDevices()));
            Assert.False(File.Exists("/run/ublk-aot/" + id + ".json"), "the state file outlived the stop");
        }
        finally
        {
            // SIGKILL of the namespace's init ends every process in it.
            if (pid1 > 0) global::Ublk.Aot.Interop.Libc.Kill(pid1, 9);
            if (!ns.WaitForExit(30_000)) ns.Kill(true);
            foreach (string m in masked) File.Delete(Path.Combine(etc, m));
            File.Delete(Path.Combine(etc, target));
            File.Delete(conf);
            if (!hadRunSystemd) Sh("rm -rf /run/systemd", check: false);
            if (Directory.Exists("/sys/class/ublk-char/ublkc" + id)) UblkAot("del " + id);
            Directory.Delete(dataDir, true);
            output.WriteLine("systemd's console:\n" + Log());
        }
        AssertNoDevices();
    }

    /// <summary>A pid of the namespace of <paramref name="pid1"/> ("71") as this namespace numbers it (NSpid: of /proc/*/status).</summary>
    private static int HostPidOf(string nsPid, int pid1)
    {
        foreach (string d in Directory.GetDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(d), out int pid)) continue;
            string? line;
            try { line = File.ReadLines(d + "/status").FirstOrDefault(l => l.StartsWith("NSpid:", StringComparison.Ordinal)); }
            catch (IOException) { continue; }
            string[] f = line?.Split((char[])['\t', ' '], StringSplitOptions.RemoveEmptyEntries) ?? [];
            if (f.Length == 3 && f[2] == nsPid && IsIn(pid, pid1)) return pid;
        }
        Assert.Fail("no process with pid " + nsPid + " in systemd's namespace");
        return 0;
    }

    private static bool IsIn(int pid, int pid1)
    {
        string? ns = global::Ublk.Aot.Interop.Libc.ReadLinkText("/proc/" + pid + "/ns/pid");
        return ns != null && ns == global::Ublk.Aot.Interop.Libc.ReadLinkText("/proc/" + pid1 + "/ns/pid");
    }

    /// <summary>
    /// recovery=off (the default): after SIGKILL the kernel keeps a dead device with the config's id that no server can
    /// take again. The restart (the same ExecStart line) removes it, says so in one line, and makes the device again
    /// from the same file: the data written before the crash is there, and the restart is not stopped by "id in use".
    /// </summary>
    [Fact]
    public void A_config_device_without_recovery_is_made_again_after_its_server_was_killed()
    {
        Require();
        AssertNoDevices();
        const int id = 42;
        string dir = TempDir("service-norecovery");
        string img = Path.Combine(dir, "disk.img");
        File.Delete(img);
        string conf = Path.Combine(dir, "plain.conf");
        File.WriteAllText(conf, "backend=file:" + img + ",size=32M\nid=" + id + "\n");
        string dev = "/dev/ublkb" + id;
        ServerProcess? s = null;
        try
        {
            s = ServerProcess.StartCommand("serve --config " + conf);
            Assert.Equal(dev, s.DevicePath);
            var data = new byte[1 << 20];
            new Random(42).NextBytes(data);
            using (var bd = new BlockDevice(dev)) bd.Write(data, 1 << 20); // O_DIRECT: in the file when it returns
            s.Signal(9);
            s.WaitExit(30_000);
            s.DisposeKeepingDevice();
            Assert.True(Directory.Exists("/sys/class/ublk-char/ublkc" + id), "the kernel removed the dead device by itself: nothing to show");
            s = ServerProcess.StartCommand("serve --config " + conf, 90_000);
            Assert.Equal(dev, s.DevicePath);
            RecoveryTests.AssertSays(s, "device " + id + " of a dead server (pid ");
            using (var bd = new BlockDevice(dev))
            {
                byte[] got = bd.Read(data.Length, 1 << 20);
                Assert.True(data.AsSpan().SequenceEqual(got), BlockDevice.Diff(dev, 1 << 20, data, got));
            }
            Assert.Equal(0, s.Stop());
        }
        finally
        {
            s?.Dispose();
            if (Directory.Exists("/sys/class/ublk-char/ublkc" + id)) UblkAot("del " + id);
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
