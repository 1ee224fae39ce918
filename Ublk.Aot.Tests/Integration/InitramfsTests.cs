using System;
using System.Collections.Generic;
using System.IO;
using System.Linq;
using System.Text.RegularExpressions;
using Xunit;
using Xunit.Abstractions;

namespace Ublk.Aot.Tests.Integration;

/// <summary>
/// The initramfs use, proven: scripts/initramfs.sh builds an image holding only the host's static busybox,
/// out/ublk-aot and the stock trixie 6.12 kernel's ublk_drv (plus the ext4 driver and its helpers, which Debian
/// builds as modules), and boots that kernel with it under QEMU (TCG; nothing of the host's filesystem is shared).
/// The guest's /init serves a file on a tmpfs, makes ext2 on /dev/ublkbN, writes and reads back a file, runs the
/// busybox it copied onto the device in a chroot, survives a SIGKILL of the server through `recover`, stops the
/// server and powers off; every step prints a marker on the serial console, which this test reads.
/// Runs on the host (it needs no ublk there: the kernel under test is the guest's), after the VM bench setup
/// (scripts/test.sh, category Initramfs). Missing QEMU, busybox-static, the kernel or the binary is a failure.
/// </summary>
[Trait("Category", "Initramfs")]
public sealed class InitramfsTests(ITestOutputHelper output)
{
    private const string Marker = "UBLK-INITRAMFS";

    /// <summary>The steps /init reports, in order (see scripts/initramfs.sh).</summary>
    private static readonly string[] Steps =
        ["mounts", "modules", "tmpfs", "features", "serve", "list-nosysfs", "list", "mkfs", "mount", "write", "readback",
         "chroot", "umount", "recover", "stop"];

    [Fact]
    public void Stock_6_12_kernel_serves_formats_runs_from_and_stops_a_ublk_device_from_a_busybox_initramfs()
    {
        string script = Path.Combine(IntegrationEnv.RepoRoot, "scripts", "initramfs.sh");
        Assert.True(File.Exists(IntegrationEnv.Binary), "missing " + IntegrationEnv.Binary + ": run ./build.sh first");
        // The script kills QEMU after 600 s; this deadline only catches a hung script.
        IntegrationEnv.Result r = IntegrationEnv.Run("/bin/bash", script + " boot", timeoutMs: 900_000);
        output.WriteLine(r.Err.TrimEnd());
        if (r.Code == 2) Assert.Fail("the initramfs test cannot run here: " + r.Err.Trim());

        string[] console = r.Out.Split('\n').Select(l => l.TrimEnd('\r')).ToArray();
        string[] marks = console.Where(l => l.StartsWith(Marker + " ", StringComparison.Ordinal)).ToArray();
        foreach (string m in marks) output.WriteLine(m);
        string tail = string.Join("\n", console.TakeLast(60));

        var failures = new List<string>();
        failures.AddRange(marks.Where(m => m.StartsWith(Marker + " FAIL ", StringComparison.Ordinal)));
        int last = -1;
        foreach (string step in Steps)
        {
            int at = Array.FindIndex(marks, m => m == Marker + " ok " + step || m.StartsWith(Marker + " ok " + step + " ", StringComparison.Ordinal));
            if (at < 0) failures.Add("step '" + step + "' never reported ok");
            else if (at < last) failures.Add("step '" + step + "' reported out of order");
            else last = at;
        }
        if (!marks.Contains(Marker + " PASS")) failures.Add("no '" + Marker + " PASS' on the console");
        if (r.Code == 124) failures.Add("QEMU timed out and was killed");
        else if (r.Code != 0) failures.Add("initramfs.sh boot exited " + r.Code);

        string? mounts = marks.FirstOrDefault(m => m.StartsWith(Marker + " ok mounts ", StringComparison.Ordinal));
        if (mounts != null && !Regex.IsMatch(mounts, @"kernel 6\.12\.")) failures.Add("the guest did not run a 6.12 kernel: " + mounts);
        string? stop = marks.FirstOrDefault(m => m.StartsWith(Marker + " ok stop ", StringComparison.Ordinal));
        if (stop != null && Regex.IsMatch(stop, @"alloc_bytes=[1-9]")) failures.Add("a queue thread allocated: " + stop);

        Assert.True(failures.Count == 0,
            "initramfs boot failed:\n  " + string.Join("\n  ", failures) + "\n--- console markers:\n" + string.Join("\n", marks) +
            "\n--- console tail:\n" + tail + "\n--- initramfs.sh stderr:\n" + r.Err);
    }
}
