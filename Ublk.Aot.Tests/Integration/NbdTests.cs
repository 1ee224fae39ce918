using System;
using System.Diagnostics;
using System.IO;
using System.Threading;
using Ublk.Aot.Tests.Backends;
using Xunit;
using static Ublk.Aot.Tests.Integration.IntegrationEnv;

namespace Ublk.Aot.Tests.Integration;

/// <summary>
/// The nbd backend against real NBD servers (nbdkit's memory and file plugins, qemu-nbd), over TCP on 127.0.0.1
/// and over unix sockets: filesystems, fio verify, the export read back by another client (qemu-img), a server
/// killed and restarted under fio, the reconnect window running out, and the refusals.
/// </summary>
[Collection(UblkCollection.Name), Trait("Category", "Integration")]
public sealed class NbdTests : IDisposable
{
    private const long MiB = 1 << 20;
    private readonly string _dir = TempDir("nbd");

    private string Sock => Path.Combine(_dir, "nbd.sock");

    private static void Fio(string what, string args, int timeoutMs = 600_000)
    {
        Result r = Run("fio", args, timeoutMs);
        Assert.True(r.Code == 0, what + ": fio failed: " + r);
        Assert.DoesNotContain("err=", r.Out.Replace("err= 0", ""));
    }

    /// <summary>Reads the whole export through qemu-img (another NBD client) into a file and compares it with <paramref name="expected"/>.</summary>
    private void AssertExportEquals(string uri, string expected)
    {
        string copy = Path.Combine(_dir, "export-copy.raw");
        File.Delete(copy);
        Sh("qemu-img convert -f raw -O raw '" + uri + "' " + copy);
        Result cmp = Sh("cmp " + expected + " " + copy, check: false);
        Assert.True(cmp.Code == 0, "the export read through qemu-img differs from what the device showed: " + cmp);
    }

    [Fact]
    public void Nbdkit_memory_over_a_unix_socket_ext4_fsck_and_the_export_equals_the_device()
    {
        using NbdServer server = NbdServer.StartNbdkit("-U " + Sock + " memory 128M", Sock);
        string uri = "nbd+unix:///?socket=" + Sock;
        string mnt = Path.Combine(_dir, "mnt");
        Directory.CreateDirectory(mnt);
        string shown = Path.Combine(_dir, "device.raw");
        using (ServerProcess s = ServerProcess.Start("--backend " + uri + " --queues 2 --stats"))
        {
            Sh("mkfs.ext4 -q -F " + s.DevicePath);
            Sh("mount " + s.DevicePath + " " + mnt);
            try
            {
                Sh("head -c 16M /dev/urandom > " + mnt + "/blob && sha256sum " + mnt + "/blob > " + _dir + "/blob.sha && sync -f " + mnt + "/blob");
                Sh("fstrim " + mnt, check: false); // TRIM reaches nbdkit (the memory plugin punches it out)
                Sh("umount " + mnt + " && echo 3 > /proc/sys/vm/drop_caches && mount " + s.DevicePath + " " + mnt + " && sha256sum -c " + _dir + "/blob.sha");
            }
            finally { Sh("umount " + mnt, check: false); }
            Result fsck = Sh("fsck.ext4 -fn " + s.DevicePath, check: false);
            Assert.True(fsck.Code == 0, "fsck.ext4 -fn is not clean: " + fsck);
            Sh("dd if=" + s.DevicePath + " of=" + shown + " bs=1M iflag=direct status=none");
            Assert.Equal(0, s.Stop());
            Assert.Contains("nbd unix socket " + Sock, s.Stderr);
            Assert.True(s.StatSum("writes") > 0 && s.StatSum("flushes") > 0, s.Stderr);
            // No allocation per request: the queue threads (sends, receives, replies) allocated nothing.
            Assert.True(s.StatSum("alloc_bytes") == 0, "the nbd queue threads allocated:\n" + s.Stderr);
            Assert.True(s.StatSum("poll_hits") == 0, "a queue polled without --poll:\n" + s.Stderr);
        }
        AssertNoDevices();
        AssertExportEquals(uri, shown);
    }

    [Fact]
    public void Qemu_nbd_over_tcp_fio_verify_and_the_image_equals_the_device()
    {
        string img = Path.Combine(_dir, "qemu.img");
        Sh("truncate -s 128M " + img);
        int port = NbdServer.FreePort();
        using NbdServer server = NbdServer.StartQemuNbd("-t -f raw -b 127.0.0.1 -p " + port + " -x disk --cache=writeback " + img, port: port);
        string shown = Path.Combine(_dir, "device.raw");
        // --poll: the queue thread spins on its ring before sleeping; the data must be the same, and the spins must land.
        using (ServerProcess s = ServerProcess.Start("--backend nbd://127.0.0.1:" + port + "/disk --poll 200 --stats"))
        {
            string common = " --filename=" + s.DevicePath + " --ioengine=io_uring --direct=1 --verify=crc32c --verify_fatal=1 --group_reporting";
            Fio("qemu-nbd 4k randwrite", "--name=rw4k --rw=randwrite --bs=4k --iodepth=32 --size=48M" + common);
            Fio("qemu-nbd mixed sizes", "--name=mixed --rw=randwrite --bsrange=4k-512k --iodepth=8 --offset=64M --size=48M" + common);
            Sh("dd if=" + s.DevicePath + " of=" + shown + " bs=1M iflag=direct status=none");
            Assert.Equal(0, s.Stop());
            Assert.True(s.StatSum("alloc_bytes") == 0 && s.StatSum("errors") == 0, "the nbd queue thread allocated or failed:\n" + s.Stderr);
            Assert.True(s.StatSum("poll_hits") > 0, "--poll 200: no wait ended in the poll window:\n" + s.Stderr);
        }
        AssertNoDevices();
        // qemu-nbd wrote the file itself: the image is what the device showed, and so is the export read by qemu-img.
        Result cmp = Sh("cmp " + img + " " + shown, check: false);
        Assert.True(cmp.Code == 0, "the image qemu-nbd serves differs from what the device showed: " + cmp);
        AssertExportEquals("nbd://127.0.0.1:" + port + "/disk", shown);
    }

    [Fact]
    public void The_server_killed_and_restarted_during_fio_costs_no_error()
    {
        // nbdkit's file plugin, so the data outlives the server; TCP, so the restart reuses the port.
        string img = Path.Combine(_dir, "file.img");
        Sh("truncate -s 128M " + img);
        int port = NbdServer.FreePort();
        string args = "-i 127.0.0.1 -p " + port + " file " + img;
        NbdServer server = NbdServer.StartNbdkit(args, port: port);
        try
        {
            using ServerProcess s = ServerProcess.Start("--backend nbd://127.0.0.1:" + port + "/ --queues 2 --stats");
            string common = " --filename=" + s.DevicePath + " --ioengine=io_uring --direct=1 --group_reporting";
            string log = Path.Combine(_dir, "fio.log");
            using var fio = Process.Start(new ProcessStartInfo("fio", "--name=kill --rw=randwrite --bs=4k --iodepth=16 --numjobs=2 --size=32M --offset_increment=64M" +
                " --verify=crc32c --verify_fatal=1 --output=" + log + common) { UseShellExecute = false })!;
            string FioLog() => File.Exists(log) ? File.ReadAllText(log) : "(no fio output)";
            Thread.Sleep(3000);
            Assert.False(fio.HasExited, "fio ended before the server was killed: " + FioLog());
            server.Kill();
            server.Dispose();
            Thread.Sleep(2000); // requests wait, kept, while nothing listens
            server = NbdServer.StartNbdkit(args, port: port);
            Assert.True(fio.WaitForExit(600_000), "fio did not finish after the restart\n" + s.Stderr);
            Assert.True(fio.ExitCode == 0, "fio saw an error across the restart: exit " + fio.ExitCode + "\n" + FioLog() + "\n" + s.Stderr);
            Assert.Contains("lost 127.0.0.1:" + port, s.Stderr);
            Assert.Contains("reconnected to 127.0.0.1:" + port, s.Stderr);
            Assert.Equal(0, s.Stop());
            Assert.Equal(0, s.StatSum("errors"));
        }
        finally { server.Dispose(); }
        AssertNoDevices();
    }

    [Fact]
    public void Past_the_reconnect_window_io_fails_with_eio_and_the_device_serves_again_when_the_server_is_back()
    {
        string img = Path.Combine(_dir, "file.img");
        Sh("head -c 8M /dev/urandom > " + img);
        string args = "-U " + Sock + " file " + img;
        NbdServer server = NbdServer.StartNbdkit(args, Sock);
        try
        {
            using ServerProcess s = ServerProcess.Start("--backend \"nbd+unix:///?socket=" + Sock + "&reconnect=2\"");
            Sh("cmp -n 1048576 " + img + " " + s.DevicePath);
            server.Kill();
            server.Dispose();
            var sw = Stopwatch.StartNew();
            Result r = Sh("dd if=" + s.DevicePath + " of=/dev/null bs=4k count=1 skip=1000 iflag=direct", check: false);
            Assert.True(r.Code != 0 && r.Err.Contains("Input/output error"), "a read with no server past reconnect=2 must fail with EIO: " + r);
            Assert.True(sw.Elapsed.TotalSeconds >= 1.5, "failed after " + sw.Elapsed.TotalSeconds + " s, before the 2 s window ended");
            Assert.Contains("failed with EIO", s.Stderr);
            Assert.True(File.Exists(s.DevicePath), "the device stays while the server is away");
            server = NbdServer.StartNbdkit(args, Sock);
            // Tries go on every 2 s at most: within a few, reads are served again.
            Result ok = default;
            for (int i = 0; i < 40; i++)
            {
                ok = Sh("dd if=" + s.DevicePath + " of=/dev/null bs=4k count=1 skip=1001 iflag=direct", check: false);
                if (ok.Code == 0) break;
                Thread.Sleep(250);
            }
            Assert.True(ok.Code == 0, "the device did not serve again after the server came back: " + ok + "\n" + s.Stderr);
            Sh("cmp " + img + " " + s.DevicePath);
            Assert.Contains("serving again", s.Stderr);
            Assert.Equal(0, s.Stop());
        }
        finally { server.Dispose(); }
        AssertNoDevices();
    }

    [Fact]
    public void A_read_only_export_without_trim_makes_a_read_only_device_without_discard()
    {
        using NbdServer server = NbdServer.StartNbdkit("-U " + Sock + " eval get_size=\"echo 1048576\" pread=\"dd if=/dev/zero count=$3 iflag=count_bytes status=none\"", Sock);
        using (ServerProcess s = ServerProcess.Start("--backend nbd+unix:///?socket=" + Sock))
        {
            string name = Path.GetFileName(s.DevicePath);
            Assert.Equal("1", File.ReadAllText("/sys/block/" + name + "/ro").Trim());
            Assert.Equal("0", File.ReadAllText("/sys/block/" + name + "/queue/discard_max_bytes").Trim());
            Sh("cmp -n 1048576 /dev/zero " + s.DevicePath);
            Assert.Equal(0, s.Stop());
        }
        AssertNoDevices();
    }

    [Fact]
    public void Bad_uris_refused_connections_unknown_exports_and_aborted_handshakes_exit_2_with_one_line_and_no_device()
    {
        int closed = NbdServer.FreePort();
        using NbdServer strict = NbdServer.StartNbdkit("-U " + Sock + " --filter=exportname memory 16M exportname=good exportname-strict=true", Sock);
        // A server that sends the greeting, reads the client's flags and hangs up: an aborted handshake.
        string abortSock = Path.Combine(_dir, "abort.sock");
        string script = Path.Combine(_dir, "abort.py");
        File.WriteAllText(script, "import socket, struct\n" +
            "s = socket.socket(socket.AF_UNIX)\ns.bind('" + abortSock + "')\ns.listen(4)\n" +
            "while True:\n    c, _ = s.accept()\n    c.sendall(b'NBDMAGIC' + b'IHAVEOPT' + struct.pack('>H', 1))\n    c.recv(4)\n    c.close()\n");
        using var aborter = Process.Start(new ProcessStartInfo("python3", script) { UseShellExecute = false })!;
        try
        {
            for (int i = 0; i < 200 && !File.Exists(abortSock); i++) Thread.Sleep(50);
            (string Spec, string Says)[] cases =
            [
                ("nbd://127.0.0.1:99999/x", "bad port '99999'"),
                ("nbds://127.0.0.1/x", "TLS (nbds) is not supported"),
                ("nbd+unix:///x", "socket="),
                ("nbd://127.0.0.1:" + closed + "/x", "cannot connect to 127.0.0.1:" + closed + ": ECONNREFUSED"),
                ("nbd+unix:///nosuch?socket=" + Sock, "no such export (NBD_REP_ERR_UNKNOWN)"),
                ("nbd+unix:///?socket=" + abortSock, "during the handshake"), // closed, or reset with our flags unread
            ];
            foreach ((string spec, string says) in cases)
            {
                Result r = UblkAot("serve --backend \"" + spec + "\"", 60_000);
                Assert.True(r.Code == 2, spec + ": expected exit 2\n" + r);
                string err = r.Err.Trim();
                Assert.True(!err.Contains('\n') && err.Contains(says), spec + ": expected one line saying '" + says + "'\n" + r);
                AssertNoDevices();
            }
        }
        finally { if (!aborter.HasExited) aborter.Kill(); }
    }

    public void Dispose()
    {
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }
}
