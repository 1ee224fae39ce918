using System;
using System.Diagnostics;
using System.IO;
using System.Text.Json;
using System.Threading;
using Xunit;
using Xunit.Abstractions;
using static Ublk.Aot.Tests.Integration.IntegrationEnv;
using static Ublk.Aot.Tests.Integration.RecoveryTests;

namespace Ublk.Aot.Tests.Integration;

/// <summary>
/// Changing servers on purpose (`upgrade`: QUIESCE_DEV on 7.x, SIGUSR1 and REISSUE on 6.12), a recovery whose own
/// server dies inside it, fail-io during an outage, and the deadline on control commands. The hold-fetch test hook
/// (UBLK_AOT_TEST_HOOK) makes a server FETCH only half its tags, so START_DEV and END_USER_RECOVERY wait in the kernel.
/// </summary>
[Collection(UblkCollection.Name), Trait("Category", "Integration")]
public sealed class UpgradeTests(ITestOutputHelper output)
{
    private const ulong Quiesce = 1UL << 12;  // UBLK_F_QUIESCE (6.16+)
    private const ulong FailIo = 1UL << 9;    // UBLK_F_USER_RECOVERY_FAIL_IO (6.13+)
    private static readonly (string, string) HoldFetch = ("UBLK_AOT_TEST_HOOK", "hold-fetch");

    [Fact]
    public void Upgrades_under_fio_verify_fail_no_request()
    {
        bool quiesce = (Features() & Quiesce) != 0;
        FioVerifyAcrossServerChanges(output, "upgrade-fio", StressKnobs.Count("UBLK_UPGRADE_CYCLES", 10), 1000, (old, id) =>
        {
            // The upgrading process becomes the new server: it prints the device once it is recovered.
            ServerProcess s = ServerProcess.StartCommand("upgrade " + id);
            AssertSays(s, quiesce ? "QUIESCE_DEV" : "SIGUSR1");
            Assert.Equal(0, old.WaitExit(30_000));
            Assert.Contains("handed over to its next server", old.Stderr);
            old.DisposeKeepingDevice();
            return s;
        });
    }

    [Fact]
    public void Upgrade_refuses_what_it_cannot_hand_over_and_touches_nothing()
    {
        Require();
        AssertNoDevices();
        using ServerProcess plain = ServerProcess.Start("--backend null:32M");
        using ServerProcess rec = ServerProcess.Start("--backend null:32M --recovery reissue");

        Result noRecovery = UblkAot("upgrade " + plain.Id);
        Assert.True(noRecovery.Code == 2 && noRecovery.Err.Contains("created without --recovery"), "upgrade of a plain device: " + noRecovery);
        Result badBinary = UblkAot("upgrade " + rec.Id + " --binary /bin/true");
        Assert.True(badBinary.Code == 2 && badBinary.Err.Contains("not a ublk-aot version; the device was not touched"), "--binary /bin/true: " + badBinary);
        Result missing = UblkAot("upgrade " + rec.Id + " --binary /nonexistent/ublk-aot");
        Assert.True(missing.Code == 2 && missing.Err.Contains("no such file"), "--binary missing: " + missing);
        Result noDevice = UblkAot("upgrade 4000");
        Assert.True(noDevice.Code == 2 && noDevice.Err.Contains("no ublk device 4000"), "upgrade of a missing device: " + noDevice);
        Result junk = UblkAot("upgrade abc");
        Assert.True(junk.Code == 2 && junk.Err.Contains("expected a device id"), "upgrade abc: " + junk);
        foreach (Result r in new[] { noRecovery, badBinary, missing, noDevice, junk })
            Assert.Single(r.Err.Trim().Split('\n'));

        // Both servers still serve their devices.
        foreach (ServerProcess s in new[] { plain, rec })
        {
            JsonElement e = ListEntry(s.Id);
            Assert.True(e.GetProperty("state").GetString() == "LIVE" && e.GetProperty("server_alive").GetBoolean(), e.ToString());
            Assert.False(s.HasExited);
        }
        Assert.Equal(0, rec.Stop());
        Assert.Equal(0, plain.Stop());
        AssertNoDevices();
    }

    [Fact]
    public void A_control_command_past_its_deadline_fails_with_one_line_and_leaves_nothing()
    {
        Require();
        AssertNoDevices();
        // Half the tags without a FETCH: START_DEV waits in the kernel until its deadline.
        var sw = Stopwatch.StartNew();
        using ServerProcess s = ServerProcess.Launch("serve --backend null:16M --timeout 2", HoldFetch);
        int code = s.WaitExit(60_000);
        long ms = sw.ElapsedMilliseconds;
        output.WriteLine(s.Stderr + "exit " + code + " after " + ms + " ms");
        Assert.Equal(1, code);
        string line = s.Stderr.Trim();
        Assert.Single(line.Split('\n'));
        Assert.Matches(@"^ublk-aot: START_DEV on ublk device \d+ did not complete within 2 s \(kernel [^)]+\); it was cancelled$", line);
        Assert.True(ms < 20_000, "the 2 s deadline took " + ms + " ms");
        AssertNoDevices();

        Result bad = UblkAot("list --timeout soon");
        Assert.True(bad.Code == 2 && bad.Err.Contains("--timeout must be a number between 0 and 86400, got 'soon'"), bad.ToString());
        Result ok = UblkAot("list --timeout 5");
        Assert.True(ok.Code == 0, ok.ToString());
    }

    [Fact]
    public void A_recovering_server_killed_inside_its_recovery_leaves_a_device_that_recovers_or_deletes_and_no_stuck_task()
    {
        Require();
        AssertNoDevices();
        // 7.x resets a dead recovering server's queues at release (a third server can recover); 6.12 cannot, so
        // there the device is deleted (docs/kernel-recovery-notes.md, section 4). QUIESCE came with that design.
        bool recoverAgain = (Features() & Quiesce) != 0;
        string dir = TempDir("recover-twice");
        string img = Path.Combine(dir, "t.img");
        File.Delete(img);
        ServerProcess s = ServerProcess.Start("--backend file:" + img + ",size=64M --recovery reissue --queues 2 --depth 16");
        int id = s.Id;
        ServerProcess? second = null;
        try
        {
            var data = new byte[1 << 20];
            new Random(11).NextBytes(data);
            using (var bd = new BlockDevice(s.DevicePath)) { bd.Write(data, 4 << 20); }
            KillUntilQuiesced(s, id);
            s.DisposeKeepingDevice();

            // The second server starts the recovery, FETCHes half its tags and waits in END_USER_RECOVERY: killed there.
            second = ServerProcess.Launch("recover " + id + " --timeout 300", HoldFetch);
            WaitCharDeviceOpenBy(second.Pid, id);
            Thread.Sleep(500);
            Assert.False(second.HasExited, "the held recovery ended by itself: " + second.Stderr);
            second.Signal(SIGKILL);
            if (recoverAgain)
            {
                Assert.Equal(128 + SIGKILL, second.WaitExit(30_000));
                second.DisposeKeepingDevice();
                JsonElement e = WaitState(id, "QUIESCED");
                Assert.True(e.GetProperty("waits_for_recovery").GetBoolean(), e.ToString());
                s = ServerProcess.StartCommand("recover " + id);
                AssertSays(s, "recovered");
                using (var bd = new BlockDevice(s.DevicePath))
                {
                    byte[] got = bd.Read(data.Length, 4 << 20);
                    Assert.True(data.AsSpan().SequenceEqual(got), BlockDevice.Diff(s.DevicePath, 4 << 20, data, got));
                }
                Assert.Equal(0, s.Stop());
            }
            else
            {
                // 6.12: the killed process may wait in its exit for the kernel to give its commands back; del does that.
                Result del = UblkAot("del " + id);
                Assert.True(del.Code == 0, "del after a recovery killed half-way: " + del);
                Assert.Equal(128 + SIGKILL, second.WaitExit(30_000));
                second.DisposeKeepingDevice();
            }
            string stuck = Sh("ps -eo stat=,pid=,comm= | awk '$1 ~ /^D/' || true").Out.Trim();
            Assert.True(stuck == "", "tasks in D state:\n" + stuck);
        }
        finally
        {
            second?.Dispose();
            s.Dispose();
            UblkAot("del " + id);
        }
        AssertNoDevices();
    }

    [Fact]
    public void Fail_io_fails_io_within_a_second_during_the_outage_and_serves_after_recovery()
    {
        Require();
        AssertNoDevices();
        if ((Features() & FailIo) == 0)
        {
            // The refusal on a kernel without the flag is asserted by RecoveryTests.Fail_io_is_served_where…
            Result r = UblkAot("serve --backend null:32M --recovery fail-io");
            Assert.True(r.Code == 2 && r.Err.Contains("UBLK_F_USER_RECOVERY_FAIL_IO"), r.ToString());
            AssertNoDevices();
            return;
        }
        string dir = TempDir("fail-io");
        string img = Path.Combine(dir, "f.img");
        File.Delete(img);
        ServerProcess s = ServerProcess.Start("--backend file:" + img + ",size=32M --recovery fail-io");
        int id = s.Id;
        string dev = s.DevicePath;
        try
        {
            Sh("dd if=/dev/urandom of=" + dev + " bs=64k count=16 oflag=direct status=none");
            Kill(s);
            WaitState(id, "FAIL_IO");
            var sw = Stopwatch.StartNew();
            Result during = Sh("dd if=" + dev + " of=/dev/null bs=4k count=1 skip=7 iflag=direct status=none", 30_000, check: false);
            long failMs = sw.ElapsedMilliseconds;
            output.WriteLine("read during the outage: exit " + during.Code + " after " + failMs + " ms: " + during.Err.Trim());
            Assert.True(during.Code != 0, "a read succeeded with no server attached (fail-io)");
            Assert.True(failMs < 1000, "the read failed only after " + failMs + " ms");
            s = Recover(s, id);
            Sh("dd if=" + dev + " of=/dev/null bs=64k count=16 iflag=direct status=none");
            Sh("dd if=/dev/zero of=" + dev + " bs=64k count=4 oflag=direct status=none");
            Assert.Equal(0, s.Stop());
        }
        finally
        {
            s.Dispose();
            UblkAot("del " + id);
        }
        AssertNoDevices();
    }

    /// <summary>Waits until process <paramref name="pid"/> holds /dev/ublkcN open (it is inside its recovery).</summary>
    private static void WaitCharDeviceOpenBy(int pid, int id)
    {
        var sw = Stopwatch.StartNew();
        while (sw.ElapsedMilliseconds < 30_000)
        {
            try
            {
                foreach (string fd in Directory.GetFileSystemEntries("/proc/" + pid + "/fd"))
                {
                    FileSystemInfo? target = new FileInfo(fd).ResolveLinkTarget(false);
                    if (target?.FullName == "/dev/ublkc" + id) return;
                }
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
            Thread.Sleep(50);
        }
        Assert.Fail("process " + pid + " never opened /dev/ublkc" + id);
    }
}
