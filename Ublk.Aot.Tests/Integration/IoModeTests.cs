using System;
using System.Diagnostics;
using System.IO;
using Xunit;
using Xunit.Abstractions;
using static Ublk.Aot.Tests.Integration.IntegrationEnv;

namespace Ublk.Aot.Tests.Integration;

/// <summary>
/// serve --io-mode: every mode the running kernel has serves fio verify, ext4 + fsck and (in RecoveryTests' helper)
/// SIGKILL/recover with no allocation per I/O; a mode the kernel lacks is refused with one line. The torture and the
/// fault-injection theories in StressTortureTests / StressFaultTests run once per mode as well.
/// </summary>
[Collection(UblkCollection.Name), Trait("Category", "Integration")]
public sealed class IoModeTests(ITestOutputHelper output)
{
    // The UBLK_F_ bits each mode needs, written out here (linux/ublk_cmd.h) rather than taken from the product.
    private const ulong ZeroCopyBit = 1UL << 0, UserCopyBit = 1UL << 7, AutoBufRegBit = 1UL << 11;

    public static ulong NeededFeatures(string mode) => mode switch
    {
        "user-copy" => UserCopyBit,
        "zero-copy" => ZeroCopyBit,
        "auto-buf-reg" => AutoBufRegBit | ZeroCopyBit,
        _ => 0,
    };

    /// <summary>
    /// True when this kernel has <paramref name="mode"/>. Otherwise asserts that serve refuses it on
    /// <paramref name="probeSpec"/> (a backend that has the mode) with one line naming the missing feature and the
    /// kernel, exit 2 and no device left, and returns false: the caller's test is then that refusal.
    /// </summary>
    public static bool ServableOrRefused(string mode, string probeSpec)
    {
        ulong need = NeededFeatures(mode);
        if ((RecoveryTests.Features() & need) == need) return true;
        AssertNoDevices();
        Result r = UblkAot("serve --backend " + probeSpec + " --io-mode " + mode);
        Assert.True(r.Code == 2, "--io-mode " + mode + " on a kernel without it: " + r);
        string line = r.Err.Trim();
        Assert.DoesNotContain('\n', line);
        Assert.Contains("needs UBLK_F_", line);
        Assert.Contains(File.ReadAllText("/proc/sys/kernel/osrelease").Trim(), line); // the kernel release is named
        AssertNoDevices();
        return false;
    }

    public static TheoryData<string> Modes => new() { "copy", "user-copy", "zero-copy", "auto-buf-reg" };

    [Theory]
    [MemberData(nameof(Modes))]
    public void Every_mode_verifies_fio_and_ext4_without_allocating(string mode)
    {
        if (!ServableOrRefused(mode, "null:1G")) return;
        string dir = TempDir("iomode-" + mode);
        string img = Path.Combine(dir, "m.img");
        File.Delete(img);
        bool memHasIt = mode is "copy" or "user-copy";
        foreach (string spec in new[] { "file:" + img + ",size=256M", "mem:256M" })
        {
            if (spec.StartsWith("mem") && !memHasIt)
            {
                Result r = UblkAot("serve --backend " + spec + " --io-mode " + mode);
                Assert.True(r.Code == 2 && r.Err.Contains("cannot use it"), "mem in " + mode + ": " + r);
                continue;
            }
            using ServerProcess s = ServerProcess.Start("--backend " + spec + " --io-mode " + mode + " --queues 2 --stats");
            RecoveryTests.AssertSays(s, "io mode " + mode);
            // Mixed sizes up to twice --max-io (the block layer splits those), random writes then a verify pass.
            Result fio = Sh("fio --name=iomode --filename=" + s.DevicePath + " --direct=1 --ioengine=io_uring --rw=randwrite" +
                " --bsrange=4k-1M --iodepth=32 --size=96M --verify=crc32c --do_verify=1 --verify_fatal=1 2>&1", check: false);
            Assert.True(fio.Code == 0 && fio.Out.Contains("err= 0"), spec + " in " + mode + ": fio verify failed:\n" + fio);
            if (spec.StartsWith("file"))
            {
                string mnt = Path.Combine(dir, "mnt");
                Directory.CreateDirectory(mnt);
                Sh("mkfs.ext4 -q -F " + s.DevicePath + " && mount " + s.DevicePath + " " + mnt);
                try
                {
                    Sh("head -c 16M /dev/urandom > " + mnt + "/blob && sha256sum " + mnt + "/blob > " + dir + "/blob.sha && sync");
                    Sh("umount " + mnt + " && echo 3 > /proc/sys/vm/drop_caches && mount " + s.DevicePath + " " + mnt + " && sha256sum -c " + dir + "/blob.sha");
                }
                finally { Sh("umount " + mnt, check: false); }
                Result fsck = Sh("fsck.ext4 -fn " + s.DevicePath, check: false);
                Assert.True(fsck.Code == 0, "fsck.ext4 in " + mode + ": " + fsck);
            }
            Assert.Equal(0, s.Stop());
            output.WriteLine(s.Stderr);
            Assert.Contains("stats io_mode=" + mode, s.Stderr);
            Assert.True(s.StatSum("errors") == 0 && s.StatSum("reg_failures") == 0, spec + " in " + mode + ": the server counted errors:\n" + s.Stderr);
            Assert.True(s.StatSum("alloc_bytes") == 0, spec + " in " + mode + ": the queue threads allocated:\n" + s.Stderr);
            Assert.True(s.StatSum("writes") > 0 && s.StatSum("reads") > 0, s.Stderr);
        }
        AssertNoDevices();
        Directory.Delete(dir, true);
    }

    /// <summary>SIGKILL during fio verify, recover: the recovered server keeps the device's mode, and nothing is lost.</summary>
    [Theory]
    [MemberData(nameof(Modes))]
    public void Sigkill_during_fio_then_recover_in_every_mode(string mode)
    {
        if (!ServableOrRefused(mode, "null:1G")) return;
        RecoveryTests.FioVerifyAcrossServerChanges(output, "iomode-kill-" + mode, 3, 1500, (s, id) =>
        {
            RecoveryTests.AssertSays(s, "io mode " + mode);
            RecoveryTests.KillUntilQuiesced(s, id);
            ServerProcess next = RecoveryTests.Recover(s, id);
            RecoveryTests.AssertSays(next, "io mode " + mode);
            return next;
        }, "--io-mode " + mode);
    }

    [Fact]
    public void Auto_picks_the_fastest_mode_the_kernel_and_backend_allow()
    {
        ulong f = RecoveryTests.Features();
        bool user = (f & UserCopyBit) != 0;
        bool auto = (f & (AutoBufRegBit | ZeroCopyBit)) == (AutoBufRegBit | ZeroCopyBit);
        bool zc = (f & ZeroCopyBit) != 0;
        string dir = TempDir("iomode-auto");
        string img = Path.Combine(dir, "a.img");
        File.Delete(img);
        (string Spec, string Expect)[] cases =
        [
            ("file:" + img + ",size=64M", auto ? "auto-buf-reg" : zc ? "zero-copy" : "copy"),
            ("mem:64M", "copy"), // user copy's io-wq hop costs more than its saved copy (MemSpec)
            ("null:64M", user ? "user-copy" : "copy"),
        ];
        foreach (var (spec, expect) in cases)
        {
            using ServerProcess s = ServerProcess.Start("--backend " + spec);
            RecoveryTests.AssertSays(s, "io mode " + expect);
            Assert.Equal(0, s.Stop());
        }
        // --fixed-buffers registers tag buffers: auto keeps to the modes that have them.
        using (ServerProcess s = ServerProcess.Start("--backend file:" + img + " --fixed-buffers"))
        {
            RecoveryTests.AssertSays(s, "io mode copy");
            Assert.Equal(0, s.Stop());
        }
        AssertNoDevices();
        Directory.Delete(dir, true);
    }

    [Fact]
    public void A_mode_the_backend_or_options_cannot_have_is_refused_in_one_line()
    {
        Require();
        foreach (string args in new[] { "--backend mem:64M --io-mode zero-copy", "--backend mem:64M --io-mode auto-buf-reg",
                                        "--backend null:64M --io-mode zero-copy --fixed-buffers", "--backend null:64M --io-mode fast" })
        {
            Result r = UblkAot("serve " + args);
            Assert.True(r.Code == 2, args + ": " + r);
            Assert.DoesNotContain('\n', r.Err.Trim());
            Assert.Contains("--io-mode", r.Err);
        }
        AssertNoDevices();
    }

    /// <summary>
    /// AUTO_BUF_REG's fallback: the test hook gives every fourth tag a buffer index outside the queue's table, so
    /// the kernel cannot register those requests and hands them over flagged NEED_REG_BUF; the queue registers them
    /// itself. fio verify must pass and the fallbacks be counted.
    /// </summary>
    [Fact]
    public void Auto_buf_reg_registers_by_hand_what_the_kernel_could_not()
    {
        if (!ServableOrRefused("auto-buf-reg", "null:1G")) return;
        string dir = TempDir("iomode-fallback");
        string img = Path.Combine(dir, "f.img");
        File.Delete(img);
        using (ServerProcess s = ServerProcess.Launch("serve --backend file:" + img + ",size=128M --io-mode auto-buf-reg --depth 16 --stats",
                   ("UBLK_AOT_TEST_HOOK", "auto-buf-bad-index")))
        {
            var sw = Stopwatch.StartNew();
            while (!s.Stdout.Contains("/dev/ublkb") && sw.ElapsedMilliseconds < 30_000 && !s.HasExited) System.Threading.Thread.Sleep(50);
            string dev = s.Stdout.Trim();
            Assert.True(dev.StartsWith("/dev/ublkb"), "serve did not come up: " + s.Stderr);
            for (int i = 0; i < 200 && !File.Exists(dev); i++) System.Threading.Thread.Sleep(25);
            Result fio = Sh("fio --name=fallback --filename=" + dev + " --direct=1 --ioengine=io_uring --rw=randwrite" +
                " --bsrange=4k-256k --iodepth=16 --size=64M --verify=crc32c --do_verify=1 --verify_fatal=1 2>&1", check: false);
            Assert.True(fio.Code == 0 && fio.Out.Contains("err= 0"), "fio verify with the fallback: " + fio);
            Assert.Equal(0, s.Stop());
            output.WriteLine(s.Stderr);
            Assert.True(s.StatSum("reg_fallbacks") > 0, "no request took the fallback:\n" + s.Stderr);
            Assert.True(s.StatSum("errors") == 0 && s.StatSum("reg_failures") == 0, s.Stderr);
            Assert.True(s.StatSum("alloc_bytes") == 0, s.Stderr);
        }
        AssertNoDevices();
        Directory.Delete(dir, true);
    }
}
