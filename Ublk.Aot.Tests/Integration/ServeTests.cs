using System;
using System.IO;
using System.Text.Json;
using Xunit;
using static Ublk.Aot.Tests.Integration.IntegrationEnv;

namespace Ublk.Aot.Tests.Integration;

/// <summary>The server as a user runs it: lifecycle, data integrity, filesystems, list/del.</summary>
[Collection(UblkCollection.Name), Trait("Category", "Integration")]
public sealed class ServeTests
{
    private const long MiB = 1 << 20;

    [Theory]
    [InlineData("mem")]
    [InlineData("file")]
    public void Probe_size_zeros_roundtrip_filesystem_and_clean_exit(string kind)
    {
        string dir = TempDir("probe-" + kind);
        string img = Path.Combine(dir, "disk.img");
        File.Delete(img);
        const long size = 256 * MiB;
        string spec = kind == "mem" ? "mem:256M" : "file:" + img + ",size=256M";
        string mnt = Path.Combine(dir, "mnt");
        Directory.CreateDirectory(mnt);

        using (ServerProcess s = ServerProcess.Start("--backend " + spec + " --queues 2 --stats"))
        {
            using (var dev = new BlockDevice(s.DevicePath))
            {
                Assert.Equal((ulong)size, dev.Size);

                // A fresh device reads zeros, at the start, the end and random places.
                var rnd = new Random(1234);
                foreach (long off in new[] { 0L, size - MiB, 64 * MiB, rnd.NextInt64(0, size / 4096 - 32) * 4096 })
                {
                    byte[] got = dev.Read((int)Math.Min(MiB, size - off), off);
                    Assert.True(Array.TrueForAll(got, b => b == 0), s.DevicePath + ": not zero at " + off + ": " + BlockDevice.Diff("zeros", off, new byte[got.Length], got));
                }

                // Random direct-I/O writes read back, and land at the same offsets in the backing file.
                var written = new (long Off, byte[] Data)[48];
                for (int i = 0; i < written.Length; i++)
                {
                    int len = rnd.Next(1, 33) * 4096;
                    long off = rnd.NextInt64(0, (size - len) / 4096) * 4096;
                    var data = new byte[len];
                    rnd.NextBytes(data);
                    dev.Write(data, off);
                    written[i] = (off, data);
                }
                // Later writes may overlap earlier ones: compare against a model of the device.
                var model = new System.Collections.Generic.Dictionary<long, byte>();
                foreach (var (off, data) in written) for (int k = 0; k < data.Length; k++) model[off + k] = data[k];
                foreach (var (off, data) in written)
                {
                    byte[] expect = new byte[data.Length];
                    for (int k = 0; k < expect.Length; k++) expect[k] = model[off + k];
                    byte[] got = dev.Read(data.Length, off);
                    Assert.True(expect.AsSpan().SequenceEqual(got), BlockDevice.Diff(s.DevicePath, off, expect, got));
                    if (kind == "file")
                    {
                        using var f = new FileStream(img, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
                        byte[] raw = new byte[data.Length];
                        f.Position = off;
                        f.ReadExactly(raw);
                        Assert.True(expect.AsSpan().SequenceEqual(raw), BlockDevice.Diff("backing file " + img, off, expect, raw));
                    }
                }
            }

            // A real filesystem: mkfs, mount, write, sync, drop caches, read back, remount, fsck.
            Sh("mkfs.ext4 -q -F " + s.DevicePath);
            Sh("mount " + s.DevicePath + " " + mnt);
            try
            {
                Sh("head -c 8M /dev/urandom > " + mnt + "/blob && sha256sum " + mnt + "/blob > " + dir + "/blob.sha && sync -f " + mnt + "/blob");
                Sh("echo 3 > /proc/sys/vm/drop_caches && sha256sum -c " + dir + "/blob.sha");
                Sh("umount " + mnt + " && mount " + s.DevicePath + " " + mnt + " && sha256sum -c " + dir + "/blob.sha");
            }
            finally
            {
                Sh("umount " + mnt, check: false);
            }
            Result fsck = Sh("fsck.ext4 -fn " + s.DevicePath, check: false);
            Assert.True(fsck.Code == 0, "fsck.ext4 -fn is not clean: " + fsck);

            int code = s.Stop();
            Assert.True(code == 0, "serve exit " + code + "\n" + s.Stderr);
            Assert.False(File.Exists(s.DevicePath), s.DevicePath + " still exists after SIGTERM");
            Assert.Contains("removed", s.Stderr);
            Assert.True(s.StatSum("reads") > 0 && s.StatSum("writes") > 0, s.Stderr);
        }
        AssertNoDevices();
        Directory.Delete(dir, true);
    }

    [Fact]
    public void List_shows_the_device_and_del_removes_it()
    {
        using ServerProcess s = ServerProcess.Start("--backend mem:64M --depth 32");
        Result l = UblkAot("list --json");
        Assert.True(l.Code == 0, l.ToString());
        using (JsonDocument doc = JsonDocument.Parse(l.Out))
        {
            JsonElement? mine = null;
            foreach (JsonElement e in doc.RootElement.EnumerateArray()) if (e.GetProperty("id").GetInt32() == s.Id) mine = e;
            Assert.True(mine.HasValue, "device " + s.Id + " not in list: " + l.Out);
            JsonElement d = mine.Value;
            Assert.Equal("LIVE", d.GetProperty("state").GetString());
            Assert.Equal(32, d.GetProperty("depth").GetInt32());
            Assert.Equal(64 * MiB, d.GetProperty("size").GetInt64());
            Assert.Equal(s.Pid, d.GetProperty("pid").GetInt32());
            Assert.Equal(s.DevicePath, d.GetProperty("block").GetString());
        }
        Result text = UblkAot("list");
        Assert.Contains("LIVE", text.Out);

        // del from outside: the server notices its device died and exits on its own.
        Result del = UblkAot("del " + s.Id, 60_000);
        Assert.True(del.Code == 0, del.ToString());
        int code = s.Stop(sig: 0, timeoutMs: 30_000);
        Assert.True(code == 0, "serve exit " + code + ": " + s.Stderr);
        AssertNoDevices();

        Result again = UblkAot("del " + s.Id);
        Assert.Equal(2, again.Code);
        Assert.Contains("no ublk device " + s.Id, again.Err);
    }

    [Fact]
    public void Multi_queue_fio_verify_on_mem_and_file()
    {
        string dir = TempDir("fio");
        string img = Path.Combine(dir, "fio.img");
        File.Delete(img);
        foreach (string spec in new[] { "mem:512M", "file:" + img + ",size=512M" })
        {
            using ServerProcess s = ServerProcess.Start("--backend " + spec + " --queues 4 --depth 64 --max-io 512K --stats");
            Result info = UblkAot("list --json");
            Assert.Contains("\"queues\":" + Math.Min(4, Environment.ProcessorCount), info.Out);
            string common = " --filename=" + s.DevicePath + " --ioengine=io_uring --direct=1 --verify=crc32c --verify_fatal=1 --do_verify=1 --group_reporting --output-format=terse --terse-version=3";
            Result rnd = Run("fio", "--name=rw4k --rw=randwrite --bs=4k --iodepth=64 --numjobs=4 --offset_increment=64M --size=32M" + common, 600_000);
            Assert.True(rnd.Code == 0, spec + ": fio 4k randwrite verify failed: " + rnd);
            Result mixed = Run("fio", "--name=mixed --rw=randwrite --bsrange=4k-512k --iodepth=16 --numjobs=2 --offset_increment=128M --size=64M" + common, 600_000);
            Assert.True(mixed.Code == 0, spec + ": fio mixed-size verify failed: " + mixed);
            Assert.Equal(0, s.Stop());
            Assert.True(s.StatSum("errors") == 0, s.Stderr);
            Assert.True(s.StatSum("alloc_bytes") == 0 && s.StatSum("gc0") == 0,
                "queue threads allocated on the data path over " + s.StatSum("writes") + " writes:\n" + s.Stderr);
            Assert.True(s.StatSum("writes") > 10_000, "expected many thousand I/Os: " + s.Stderr);
        }
        AssertNoDevices();
        Directory.Delete(dir, true);
    }

    [Fact]
    public void Discard_and_write_zeroes_reach_the_backing_file()
    {
        string dir = TempDir("discard");
        string img = Path.Combine(dir, "d.img");
        File.Delete(img);
        using (ServerProcess s = ServerProcess.Start("--backend file:" + img + ",size=64M --stats"))
        {
            Sh("head -c 16M /dev/urandom | dd of=" + s.DevicePath + " bs=1M oflag=direct status=none");
            long before = Blocks(img);
            Sh("blkdiscard -o 1M -l 4M " + s.DevicePath);
            Sh("blkdiscard -z -o 8M -l 2M " + s.DevicePath);
            long after = Blocks(img);
            Assert.True(before - after >= 4 * MiB / 512, "discard did not punch the backing file: blocks " + before + " -> " + after);
            using var f = new FileStream(img, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            foreach (var (off, len) in new[] { (1 * MiB, 4 * MiB), (8 * MiB, 2 * MiB) })
            {
                byte[] raw = new byte[len];
                f.Position = off;
                f.ReadExactly(raw);
                Assert.True(Array.TrueForAll(raw, b => b == 0), BlockDevice.Diff("backing file " + img, off, new byte[len], raw));
            }
            byte[] edge = new byte[4096];
            f.Position = 5 * MiB;
            f.ReadExactly(edge);
            Assert.False(Array.TrueForAll(edge, b => b == 0), "data after the discarded range was lost");
            Assert.Equal(0, s.Stop());
            Assert.True(s.StatSum("discards") > 0 && s.StatSum("write_zeroes") > 0, s.Stderr);
        }
        Directory.Delete(dir, true);
    }

    private static long Blocks(string path) => long.Parse(Sh("stat -c %b " + path).Out.Trim());

    [Fact]
    public void Flush_reaches_the_backend()
    {
        string dir = TempDir("flush");
        string img = Path.Combine(dir, "f.img");
        File.Delete(img);
        using (ServerProcess s = ServerProcess.Start("--backend file:" + img + ",size=32M --stats"))
        {
            Assert.Equal("write back", File.ReadAllText("/sys/block/ublkb" + s.Id + "/queue/write_cache").Trim());
            Sh("dd if=/dev/urandom of=" + s.DevicePath + " bs=64k count=16 conv=fsync status=none");
            Sh("dd if=/dev/urandom of=" + s.DevicePath + " bs=4k count=4 oflag=direct,sync status=none");
            Assert.Equal(0, s.Stop());
            Assert.True(s.StatSum("flushes") >= 1, "no FLUSH reached the backend:\n" + s.Stderr);
        }
        Directory.Delete(dir, true);
    }

    [Fact]
    public void Idle_queue_gives_its_buffer_pages_back()
    {
        // 24 tags x 256 KiB = 6 MiB of tag buffers; fio at depth 24 with 256 KiB writes touches all of them.
        using ServerProcess s = ServerProcess.Start("--backend mem:64M --queues 1 --depth 24 --max-io 256K --idle-release 1 --io-mode copy --stats");
        string common = " --name=idle --filename=" + s.DevicePath + " --ioengine=io_uring --direct=1 --rw=write --bs=256k --iodepth=24 --size=48M" +
            " --verify=crc32c --verify_fatal=1 --output-format=terse --terse-version=3";
        Result w = Run("fio", common + " --do_verify=0", 600_000);
        Assert.True(w.Code == 0, "fio write failed: " + w);
        long busy = RssAnonKiB(s.Pid);
        // Released at the first tick with no request since the tick before: within 1-2 s of the last I/O.
        long idle = busy;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (clock.ElapsedMilliseconds < 20_000 && busy - idle < 4096)
        {
            System.Threading.Thread.Sleep(250);
            idle = RssAnonKiB(s.Pid);
        }
        Assert.True(busy - idle >= 4096, "RssAnon of serve went from " + busy + " KiB (just after the writes) to " + idle + " KiB " +
            clock.ElapsedMilliseconds + " ms later: the idle queue did not give its ~6 MiB of buffers back");
        // The buffers fault in again on the next request, and the data is intact.
        Result v = Run("fio", common + " --verify_only", 600_000);
        Assert.True(v.Code == 0, "fio verify after the buffers were released failed: " + v);
        Assert.Equal(0, s.Stop());
        Assert.True(s.StatSum("idle_releases") >= 1 && s.StatSum("errors") == 0, s.Stderr);
    }

    [Fact]
    public void File_backend_with_fixed_buffers_verifies_and_never_releases_them()
    {
        string dir = TempDir("fixedbuf");
        string img = Path.Combine(dir, "fb.img");
        File.Delete(img);
        using (ServerProcess s = ServerProcess.Start("--backend file:" + img + ",size=128M --queues 2 --depth 32 --max-io 256K --fixed-buffers --idle-release 1 --stats"))
        {
            // Registration pins every buffer: 2 queues x 32 x 256 KiB = 16 MiB resident from the start.
            long rss = RssAnonKiB(s.Pid);
            Assert.True(rss >= 16 * 1024, "RssAnon " + rss + " KiB: the registered buffers should be resident (16 MiB)");
            string job = "--name=fixed --rw=randwrite --bsrange=4k-256k --iodepth=32 --numjobs=2 --offset_increment=64M --size=24M" +
                " --filename=" + s.DevicePath + " --ioengine=io_uring --direct=1 --verify=crc32c --verify_fatal=1 --do_verify=1" +
                " --group_reporting --output-format=terse --terse-version=3";
            Result r = Run("fio", job, 600_000);
            Assert.True(r.Code == 0, "fio verify with --fixed-buffers failed: " + r);
            System.Threading.Thread.Sleep(2500); // idle past --idle-release: must not release pinned buffers
            Result again = Run("fio", job, 600_000);
            Assert.True(again.Code == 0, "fio verify with --fixed-buffers after an idle period failed: " + again);
            Assert.Equal(0, s.Stop());
            Assert.True(s.StatSum("errors") == 0 && s.StatSum("idle_releases") == 0 && s.StatSum("alloc_bytes") == 0, s.Stderr);
        }
        Directory.Delete(dir, true);
    }

    [Fact]
    public void Huge_buffers_sit_on_transparent_huge_pages()
    {
        string thp = File.ReadAllText("/sys/kernel/mm/transparent_hugepage/enabled").Trim();
        Assert.False(thp.Contains("[never]"), "transparent huge pages are off in this kernel (" + thp + "): cannot check --huge-buffers");
        // 8 tags x 1 MiB = 8 MiB of buffers on a 2 MiB boundary; 1 MiB writes at depth 8 touch all of them.
        using ServerProcess s = ServerProcess.Start("--backend null:64M --queues 1 --depth 8 --max-io 1M --huge-buffers --io-mode copy --stats");
        Result w = Run("fio", "--name=huge --filename=" + s.DevicePath + " --ioengine=io_uring --direct=1 --rw=write --bs=1M --iodepth=8 --size=48M" +
            " --output-format=terse --terse-version=3", 600_000);
        Assert.True(w.Code == 0, "fio write failed: " + w);
        // The buffer area is the mapping madvise(MADV_HUGEPAGE) marked ("hg" in VmFlags).
        string smaps = File.ReadAllText("/proc/" + s.Pid + "/smaps");
        long huge = -1;
        string? header = null;
        long vmaHuge = 0;
        foreach (string line in smaps.Split('\n'))
        {
            if (line.Length > 0 && char.IsAsciiHexDigit(line[0]) && line.Contains('-')) { header = line; vmaHuge = 0; }
            else if (line.StartsWith("AnonHugePages:", StringComparison.Ordinal)) vmaHuge = long.Parse(line.AsSpan(14).Trim().TrimEnd("kB").Trim());
            else if (line.StartsWith("VmFlags:", StringComparison.Ordinal) && (" " + line.Substring(8) + " ").Contains(" hg "))
            {
                Assert.True(huge < 0, "more than one MADV_HUGEPAGE mapping in serve: " + header);
                huge = vmaHuge;
                ulong start = Convert.ToUInt64(header!.Substring(0, header.IndexOf('-')), 16);
                Assert.True(start % (2 << 20) == 0, "the huge-page buffer mapping does not start on a 2 MiB boundary: " + header);
            }
        }
        Assert.True(huge >= 0, "serve --huge-buffers has no MADV_HUGEPAGE mapping");
        Assert.True(huge >= 2048, "the buffer mapping has " + huge + " KiB of AnonHugePages after 48 MiB of 1 MiB writes (THP: " + thp + ")");
        Assert.Equal(0, s.Stop());
        Assert.True(s.StatSum("errors") == 0, s.Stderr);
    }

    private static long RssAnonKiB(int pid)
    {
        foreach (string line in File.ReadAllLines("/proc/" + pid + "/status"))
            if (line.StartsWith("RssAnon:", StringComparison.Ordinal))
                return long.Parse(line.AsSpan(8).Trim().TrimEnd("kB").Trim());
        throw new InvalidOperationException("no RssAnon in /proc/" + pid + "/status");
    }

    [Fact]
    public void Read_only_device_rejects_writes()
    {
        using ServerProcess s = ServerProcess.Start("--backend mem:16M --read-only --cpus 1 --stats");
        Assert.Equal("1", Sh("blockdev --getro " + s.DevicePath).Out.Trim());
        Result w = Sh("dd if=/dev/zero of=" + s.DevicePath + " bs=4k count=1 oflag=direct status=none", check: false);
        Assert.True(w.Code != 0, "a write to a read-only device succeeded");
        Assert.Matches("Read-only file system|Operation not permitted|Input/output error|Permission denied", w.Err);
        using var dev = new BlockDevice(s.DevicePath, write: false);
        Assert.Equal(4096, dev.Read(4096, 0).Length);
        // --cpus 1: the queue thread is pinned there (and reports the CPU it ran on).
        string affinity = Sh("grep -h Cpus_allowed_list /proc/" + s.Pid + "/task/*/status").Out;
        Assert.Contains("Cpus_allowed_list:\t1\n", affinity);
        Assert.Equal(0, s.Stop());
        Assert.True(s.StatSum("cpu") == 1, "queue thread did not run on CPU 1:\n" + s.Stderr);
    }
}
