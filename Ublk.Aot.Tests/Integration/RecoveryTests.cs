using System;
using System.Diagnostics;
using System.IO;
using System.Text.Json;
using System.Threading;
using Xunit;
using Xunit.Abstractions;
using static Ublk.Aot.Tests.Integration.IntegrationEnv;

namespace Ublk.Aot.Tests.Integration;

/// <summary>
/// User recovery: a device made with --recovery outlives its server's SIGKILL (QUIESCED, I/O waiting) and a new
/// process takes it over with `recover ID` or `serve --id ID`, from the state file in /run/ublk-aot.
/// </summary>
[Collection(UblkCollection.Name), Trait("Category", "Integration")]
public sealed class RecoveryTests(ITestOutputHelper output)
{
    internal const int SIGKILL = 9;

    /// <summary>SIGKILLs the server (no cleanup of ours runs).</summary>
    internal static void Kill(ServerProcess s) => Assert.Equal(128 + SIGKILL, s.Stop(sig: SIGKILL, timeoutMs: 30_000));

    /// <summary>SIGKILLs the server of a recoverable device and waits until the kernel has it QUIESCED; returns its list entry.</summary>
    internal static JsonElement KillUntilQuiesced(ServerProcess s, int id)
    {
        Kill(s);
        return WaitState(id, "QUIESCED");
    }

    /// <summary>`recover ID` after <paramref name="killed"/>'s death; its device is left for the new server.</summary>
    internal static ServerProcess Recover(ServerProcess killed, int id)
    {
        killed.DisposeKeepingDevice();
        return ServerProcess.StartCommand("recover " + id);
    }

    internal static JsonElement ListEntry(int id)
    {
        Result r = UblkAot("list --json");
        Assert.True(r.Code == 0, "list --json: " + r);
        using var doc = JsonDocument.Parse(r.Out);
        foreach (JsonElement e in doc.RootElement.EnumerateArray())
            if (e.GetProperty("id").GetInt32() == id) return e.Clone();
        Assert.Fail("device " + id + " is not listed: " + r.Out);
        return default;
    }

    /// <summary>Waits until the device's state is <paramref name="state"/> (the kernel settles a dead server asynchronously).</summary>
    internal static JsonElement WaitState(int id, string state, int timeoutMs = 30_000)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            JsonElement e = ListEntry(id);
            if (e.GetProperty("state").GetString() == state) return e;
            if (sw.ElapsedMilliseconds > timeoutMs) Assert.Fail("device " + id + " did not reach " + state + " within " + timeoutMs + " ms: " + e);
            Thread.Sleep(100);
        }
    }

    /// <summary>The start-up line reaches stderr just after the device path reaches stdout: wait for it.</summary>
    internal static void AssertSays(ServerProcess s, string text)
    {
        var sw = Stopwatch.StartNew();
        while (!s.Stderr.Contains(text) && sw.ElapsedMilliseconds < 10_000) Thread.Sleep(20);
        Assert.True(s.Stderr.Contains(text), "expected '" + text + "' from " + s.Args + ", got:\n" + s.Stderr);
    }

    internal static ulong Features()
    {
        Require(); // loads ublk_drv
        Result r = UblkAot("features --json");
        Assert.True(r.Code == 0, "features: " + r);
        using var doc = JsonDocument.Parse(r.Out);
        return doc.RootElement.GetProperty("value").GetUInt64();
    }

    /// <summary>
    /// A recoverable file device under paced fio random writes with crc32c verify; <paramref name="change"/> replaces
    /// its server <paramref name="count"/> times while fio writes (it gets the current server and returns the next).
    /// fio must end with exit 0, err= 0 and its verify passed; then the last server stops and the state file goes.
    /// </summary>
    internal static void FioVerifyAcrossServerChanges(ITestOutputHelper output, string name, int count, int pauseMs,
        Func<ServerProcess, int, ServerProcess> change, string serveArgs = "")
    {
        Require();
        AssertNoDevices();
        string dir = TempDir(name);
        string img = Path.Combine(dir, "r.img");
        File.Delete(img);
        ServerProcess s = ServerProcess.Start("--backend file:" + img + ",size=256M --recovery reissue --queues 2 --depth 32 " + serveArgs);
        int id = s.Id;
        string dev = s.DevicePath;
        Process? fio = null;
        try
        {
            Assert.True(File.Exists("/run/ublk-aot/" + id + ".json"), "no state file for a recoverable device");
            // Paced random writes with verification afterwards: the write phase outlasts every change of server.
            string log = Path.Combine(dir, "fio.log");
            string job = "fio --name=" + name + " --filename=" + dev + " --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k" +
                " --iodepth=16 --size=64M --rate_iops=" + Math.Max(50, 16384 / (count * (pauseMs / 1000 + 6))) +
                " --verify=crc32c --do_verify=1 --verify_fatal=1";
            fio = Process.Start(new ProcessStartInfo("/bin/bash", "-c \"" + job + " > " + log + " 2>&1\"") { UseShellExecute = false })!;
            string FioLog() => File.Exists(log) ? File.ReadAllText(log) : "";
            for (int c = 0; c < count; c++)
            {
                Thread.Sleep(pauseMs);
                Assert.False(fio.HasExited, "fio ended before change " + c + ": " + FioLog());
                s = change(s, id);
                Assert.Equal(dev, s.DevicePath);
                AssertSays(s, "recovered " + dev);
            }
            Assert.True(fio.WaitForExit(600_000), "fio did not finish after the last change of server");
            string fioLog = FioLog();
            output.WriteLine(fioLog);
            Assert.True(fio.ExitCode == 0, "fio failed across " + count + " changes of server (exit " + fio.ExitCode + "):\n" + fioLog);
            Assert.Contains("err= 0", fioLog);
            Assert.True(ListEntry(id).GetProperty("server_alive").GetBoolean());
            Assert.Equal(0, s.Stop());
            Assert.False(File.Exists("/run/ublk-aot/" + id + ".json"), "the state file outlived the device");
        }
        finally
        {
            if (fio is { HasExited: false }) { fio.Kill(); fio.WaitForExit(10_000); }
            s.Dispose();
            UblkAot("del " + id);
        }
        AssertNoDevices();
    }

    [Fact]
    public void Sigkill_during_fio_verify_then_recover_loses_nothing()
        => FioVerifyAcrossServerChanges(output, "recover-fio", StressKnobs.Count("UBLK_RECOVER_CYCLES", 20), 1500, (s, id) =>
        {
            string dev = s.DevicePath;
            JsonElement e = KillUntilQuiesced(s, id);
            Assert.False(e.GetProperty("server_alive").GetBoolean(), "a killed server is reported alive: " + e);
            Assert.True(e.GetProperty("waits_for_recovery").GetBoolean(), e.ToString());
            Assert.True(File.Exists(dev), dev + " vanished while the device waited for recovery");
            return Recover(s, id);
        });

    [Fact]
    public void Mkfs_killed_mid_way_and_a_mounted_filesystem_survive_kill_and_recover()
    {
        Require();
        AssertNoDevices();
        string dir = TempDir("recover-fs");
        string img = Path.Combine(dir, "fs.img");
        string mnt = Path.Combine(dir, "mnt");
        File.Delete(img);
        Directory.CreateDirectory(mnt);
        ServerProcess s = ServerProcess.Start("--backend file:" + img + ",size=1G --recovery reissue --queues 2");
        int id = s.Id;
        string dev = s.DevicePath;
        bool mounted = false;
        try
        {
            // mkfs in the background (no lazy init: it writes the whole inode tables), the server killed under it.
            using var mkfs = Process.Start(new ProcessStartInfo("/bin/bash",
                "-c \"mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 " + dev + " > " + dir + "/mkfs.log 2>&1\"") { UseShellExecute = false })!;
            // Kill once mkfs has written its first MiB (field 7 of the disk's stat: sectors written), long before it is done.
            string stat = "/sys/block/" + Path.GetFileName(dev) + "/stat";
            var sw = Stopwatch.StartNew();
            while (!mkfs.HasExited && sw.ElapsedMilliseconds < 60_000 &&
                   long.Parse(File.ReadAllText(stat).Split(' ', StringSplitOptions.RemoveEmptyEntries)[6]) < 2048)
                Thread.Sleep(5);
            Assert.False(mkfs.HasExited, "mkfs was done before the kill (exit " + (mkfs.HasExited ? mkfs.ExitCode : 0) + "): the test did not kill it mid-way");
            KillUntilQuiesced(s, id);
            s = Recover(s, id);
            Assert.True(mkfs.WaitForExit(300_000), "mkfs did not finish after the recovery");
            Assert.True(mkfs.ExitCode == 0, "mkfs failed across kill/recover: " + File.ReadAllText(dir + "/mkfs.log"));
            Sh("fsck.ext4 -n -f " + dev);

            // A mounted filesystem: a file written before the kill, more written after the recovery, all intact.
            Sh("mount " + dev + " " + mnt);
            mounted = true;
            Sh("head -c 4M /dev/urandom > " + mnt + "/before && sync -f " + mnt + "/before");
            KillUntilQuiesced(s, id);
            s = Recover(s, id);
            Sh("head -c 4M /dev/urandom > " + mnt + "/after && sync -f " + mnt + "/after");
            Sh("cd " + mnt + " && sha256sum before after > " + dir + "/sums && echo 3 > /proc/sys/vm/drop_caches && sha256sum -c " + dir + "/sums");
            Sh("umount " + mnt);
            mounted = false;
            Sh("fsck.ext4 -n -f " + dev);
            Assert.Equal(0, s.Stop());
        }
        finally
        {
            if (mounted) Sh("umount -l " + mnt, check: false);
            s.Dispose();
            UblkAot("del " + id);
        }
        AssertNoDevices();
    }

    [Fact]
    public void A_mismatched_spec_is_refused_and_serve_id_recovers_with_the_data()
    {
        Require();
        AssertNoDevices();
        string dir = TempDir("recover-id");
        string img = Path.Combine(dir, "a.img");
        string other = Path.Combine(dir, "b.img");
        File.Delete(img);
        File.Delete(other);
        string spec = "file:" + img + ",size=64M";
        ServerProcess s = ServerProcess.Start("--backend " + spec + " --recovery reissue");
        int id = s.Id;
        try
        {
            var data = new byte[1 << 20];
            new Random(7).NextBytes(data);
            using (var bd = new BlockDevice(s.DevicePath)) { bd.Write(data, 8 << 20); }
            KillUntilQuiesced(s, id);

            Result wrongSize = UblkAot("recover " + id + " --backend file:" + other + ",size=32M");
            Assert.True(wrongSize.Code == 2, "a backend of another size was accepted: " + wrongSize);
            Assert.Contains("the backend has 33554432 bytes, the device 67108864", wrongSize.Err);
            Result wrongBlock = UblkAot("recover " + id + " --backend " + spec + " --block-size 4096");
            Assert.True(wrongBlock.Code == 2, "another block size was accepted: " + wrongBlock);
            Assert.Contains("block size 512, not 4096", wrongBlock.Err);
            Result notDead = UblkAot("recover 4000");
            Assert.True(notDead.Code == 2, "recover of a missing device: " + notDead);
            WaitState(id, "QUIESCED", 1000); // the refusals changed nothing

            s.DisposeKeepingDevice();
            s = ServerProcess.Start("--id " + id + " --backend " + spec + " --recovery reissue");
            Assert.Equal(id, s.Id);
            AssertSays(s, "recovered");
            JsonElement e = WaitState(id, "LIVE");
            Assert.True(e.GetProperty("server_alive").GetBoolean(), e.ToString());
            using (var bd = new BlockDevice(s.DevicePath))
            {
                byte[] got = bd.Read(data.Length, 8 << 20);
                Assert.True(data.AsSpan().SequenceEqual(got), BlockDevice.Diff(s.DevicePath, 8 << 20, data, got));
            }
            Result live = UblkAot("recover " + id);
            Assert.True(live.Code == 2 && live.Err.Contains("is LIVE"), "recover of a live device: " + live);
            Assert.Equal(0, s.Stop());
        }
        finally
        {
            s.Dispose();
            UblkAot("del " + id);
        }
        AssertNoDevices();
    }

    [Fact]
    public void Del_dead_removes_the_devices_whose_server_is_gone_and_nothing_else()
    {
        Require();
        AssertNoDevices();
        ServerProcess dead = ServerProcess.Start("--backend null:32M --recovery reissue");
        ServerProcess killedPlain = ServerProcess.Start("--backend mem:32M");
        ServerProcess live = ServerProcess.Start("--backend null:32M --recovery reissue");
        try
        {
            Kill(dead);
            Kill(killedPlain);
            WaitState(dead.Id, "QUIESCED");
            WaitState(killedPlain.Id, "DEAD");
            Result list = UblkAot("list");
            output.WriteLine(list.Out);
            Assert.True(list.Code == 0, list.ToString());
            Result del = UblkAot("del --dead");
            Assert.True(del.Code == 0, "del --dead: " + del);
            var sw = Stopwatch.StartNew();
            while ((Directory.Exists("/sys/class/ublk-char/ublkc" + dead.Id) || Directory.Exists("/sys/class/ublk-char/ublkc" + killedPlain.Id)) && sw.ElapsedMilliseconds < 10_000)
                Thread.Sleep(50);
            Assert.False(Directory.Exists("/sys/class/ublk-char/ublkc" + dead.Id), "del --dead left the quiesced device");
            Assert.False(Directory.Exists("/sys/class/ublk-char/ublkc" + killedPlain.Id), "del --dead left the dead device");
            Assert.False(File.Exists("/run/ublk-aot/" + dead.Id + ".json"), "del --dead left the state file");
            JsonElement e = WaitState(live.Id, "LIVE", 1000);
            Assert.True(e.GetProperty("server_alive").GetBoolean(), e.ToString());
            Assert.Equal(0, live.Stop());
        }
        finally
        {
            dead.Dispose();
            killedPlain.Dispose();
            live.Dispose();
        }
        AssertNoDevices();
    }

    [Fact]
    public void Fail_io_is_served_where_the_kernel_has_it_and_refused_clearly_where_not()
    {
        Require();
        AssertNoDevices();
        const ulong FailIo = 1UL << 9; // UBLK_F_USER_RECOVERY_FAIL_IO (6.13+)
        if ((Features() & FailIo) != 0)
        {
            using ServerProcess s = ServerProcess.Start("--backend null:32M --recovery fail-io");
            Assert.Equal("fail-io", ListEntry(s.Id).GetProperty("recovery").GetString());
            Assert.Equal(0, s.Stop());
        }
        else
        {
            Result r = UblkAot("serve --backend null:32M --recovery fail-io");
            Assert.True(r.Code == 2, "fail-io on a kernel without it: " + r);
            Assert.Contains("--recovery fail-io needs UBLK_F_USER_RECOVERY_FAIL_IO", r.Err);
            Assert.Equal("", r.Out);
        }
        AssertNoDevices();
    }
}
