using System;
using System.IO;
using System.Threading;
using Xunit;
using Xunit.Abstractions;
using static Ublk.Aot.Tests.Integration.IntegrationEnv;

namespace Ublk.Aot.Tests.Integration;

/// <summary>
/// The qcow2 backend against qemu's own tools (qemu-utils in the guest): images qemu-img makes, served by
/// ublk-aot, written through ext4 and fio verify, then `qemu-img check` clean and `qemu-img convert -O raw` equal to
/// what the device showed; images qemu wrote (compressed too) read byte-exact; SIGKILL of the server in the middle
/// of writes, repeated, leaves no corruption and every flushed write in place.
/// </summary>
[Collection(UblkCollection.Name), Trait("Category", "Integration")]
public sealed class Qcow2Tests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = TempDir("qcow2");

    private string P(string name) => Path.Combine(_dir, name);

    public void Dispose()
    {
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }

    private static void Fio(string what, string args)
    {
        Result r = Run("fio", args, 600_000);
        Assert.True(r.Code == 0, what + ": fio failed: " + r);
        Assert.DoesNotContain("err=", r.Out.Replace("err= 0", ""));
    }

    /// <summary>`qemu-img check`: exit 0 and no errors; with <paramref name="leaksAllowed"/> exit 3 (leaks only) too.</summary>
    private static Result Check(string image, bool leaksAllowed = false)
    {
        Result r = Sh("qemu-img check " + image, check: false);
        bool ok = r.Code == 0 || (leaksAllowed && r.Code == 3);
        Assert.True(ok && !r.Out.Contains("ERROR") && !r.Out.Contains("corrupt"), "qemu-img check " + image + ":\n" + r);
        if (!leaksAllowed) Assert.Contains("No errors were found", r.Out);
        return r;
    }

    private void AssertQemuSees(string image, string shown)
    {
        string raw = image + ".qemu.raw";
        Sh("qemu-img convert -O raw " + image + " " + raw);
        Result cmp = Sh("cmp " + raw + " " + shown, check: false);
        Assert.True(cmp.Code == 0, "qemu-img convert of " + image + " differs from what the device showed: " + cmp);
        File.Delete(raw);
    }

    [Theory]
    [InlineData("compat=0.10,cluster_size=65536", false)]
    [InlineData("compat=1.1,cluster_size=4096", false)]
    [InlineData("compat=1.1,cluster_size=2M", false)]
    [InlineData("compat=1.1,cluster_size=65536,extended_l2=on", true)]
    [InlineData("compat=1.1,cluster_size=65536", true)]
    public void Ext4_fsck_fio_verify_then_qemu_img_check_is_clean_and_convert_equals_the_device(string options, bool backing)
    {
        string img = P("disk.qcow2");
        if (backing)
        {
            // A qcow2 backing image qemu-io wrote, under the image: unwritten clusters show it through.
            Sh("cd " + _dir + " && qemu-img create -q -f qcow2 base.qcow2 128M && qemu-io -f qcow2 base.qcow2 -c 'write -P 0x5a 0 40M' >/dev/null");
            Sh("cd " + _dir + " && qemu-img create -q -f qcow2 -o " + options + " -b base.qcow2 -F qcow2 disk.qcow2 128M");
        }
        else Sh("qemu-img create -q -f qcow2 -o " + options + " " + img + " 128M");
        string mnt = P("mnt"), shown = P("device.raw");
        Directory.CreateDirectory(mnt);
        using (ServerProcess s = ServerProcess.Start("--backend qcow2:" + img + " --stats"))
        {
            Sh("mkfs.ext4 -q -F -E nodiscard " + s.DevicePath);
            Sh("mount " + s.DevicePath + " " + mnt);
            try
            {
                Sh("head -c 12M /dev/urandom > " + mnt + "/blob && sha256sum " + mnt + "/blob > " + _dir + "/blob.sha && sync -f " + mnt + "/blob");
                Sh("rm " + mnt + "/blob && fstrim " + mnt + " && head -c 8M /dev/urandom > " + mnt + "/blob2 && sha256sum " + mnt + "/blob2 > " + _dir + "/blob.sha && sync -f " + mnt + "/blob2");
                Sh("umount " + mnt + " && echo 3 > /proc/sys/vm/drop_caches && mount " + s.DevicePath + " " + mnt + " && sha256sum -c " + _dir + "/blob.sha");
            }
            finally { Sh("umount " + mnt, check: false); }
            Result fsck = Sh("fsck.ext4 -fn " + s.DevicePath, check: false);
            Assert.True(fsck.Code == 0, "fsck.ext4 -fn is not clean: " + fsck);
            // fio verify past the file system's end of use: allocating writes, then overwrites in place.
            string common = " --filename=" + s.DevicePath + " --ioengine=io_uring --direct=1 --verify=crc32c --verify_fatal=1 --group_reporting";
            Fio("qcow2 4k randwrite", "--name=rw4k --rw=randwrite --bs=4k --iodepth=16 --offset=64M --size=24M" + common);
            Fio("qcow2 mixed sizes", "--name=mixed --rw=randwrite --bsrange=4k-256k --iodepth=8 --offset=88M --size=32M" + common);
            Sh("blkdiscard -o 100M -l 4M " + s.DevicePath);
            Sh("dd if=" + s.DevicePath + " of=" + shown + " bs=1M iflag=direct status=none");
            Assert.Equal(0, s.Stop());
            Assert.True(s.StatSum("errors") == 0, s.Stderr);
            output.WriteLine(options + (backing ? " +backing" : "") + ": queue thread allocated " + s.StatSum("alloc_bytes") + " bytes; " + new FileInfo(img).Length + " bytes of image");
        }
        AssertNoDevices();
        Check(img);
        AssertQemuSees(img, shown);
    }

    [Fact]
    public void Images_qemu_wrote_compressed_and_through_a_chain_read_byte_exact_and_read_only_is_honoured()
    {
        Sh("cd " + _dir + " && qemu-img create -q -f raw base.raw 24M && qemu-io -f raw base.raw -c 'write -P 0x31 0 24M' >/dev/null");
        Sh("cd " + _dir + " && qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2 32M");
        Sh("qemu-io -f qcow2 " + P("mid.qcow2") + " -c 'write -P 0x61 1M 3M' -c 'write -z 8M 1M' -c 'write -P 0x62 20M 70k' -c 'discard 2M 64k' >/dev/null");
        Sh("qemu-img convert -c -O qcow2 " + P("mid.qcow2") + " " + P("packed.qcow2"));
        Sh("cd " + _dir + " && qemu-img create -q -f qcow2 -o cluster_size=16384,extended_l2=on -b mid.qcow2 -F qcow2 top.qcow2 32M");
        Sh("qemu-io -f qcow2 " + P("top.qcow2") + " -c 'write -P 0x71 66k 1k' -c 'write -P 0x72 31M 512k' >/dev/null");
        foreach (string name in new[] { "packed.qcow2", "top.qcow2" })
        {
            string img = P(name), shown = P(name + ".shown");
            Sh("qemu-img check " + img);
            string sum = Sh("sha256sum " + img).Out;
            using (ServerProcess s = ServerProcess.Start("--backend qcow2:" + img + " --read-only"))
            {
                Assert.Equal("1", File.ReadAllText("/sys/block/" + Path.GetFileName(s.DevicePath) + "/ro").Trim());
                Sh("dd if=" + s.DevicePath + " of=" + shown + " bs=64k iflag=direct status=none");
                Assert.Equal(0, s.Stop());
            }
            AssertNoDevices();
            AssertQemuSees(img, shown);
            Assert.Equal(sum, Sh("sha256sum " + img).Out); // read-only: not a byte of the image changed
        }
    }

    /// <summary>
    /// A writer in this process writes distinct 4 KiB-aligned ranges (4 KiB to 96 KiB, so partial clusters, new
    /// clusters and new L2 tables all happen) through the page cache and fsyncs every 8 writes, noting what was
    /// durable; the server is killed with SIGKILL in the middle. Then: the dead device deleted, `qemu-img check`
    /// reports no corruption (leaks allowed), and qemu-img convert shows every write that was fsynced. Three rounds
    /// on the same image, each reopening what the last kill left. With 512-byte clusters and 64-bit refcounts the
    /// one-cluster refcount table covers 2 MiB of file, so the table moves to a larger one again and again while
    /// the writer runs, and the kills land among those moves.
    /// </summary>
    [Theory]
    [InlineData("cluster_size=65536")]
    [InlineData("cluster_size=512,refcount_bits=64")]
    public void Sigkill_mid_write_repeated_leaves_no_corruption_and_every_flushed_write(string options)
    {
        string img = P("kill.qcow2");
        File.Delete(img);
        Sh("qemu-img create -q -f qcow2 -o " + options + " " + img + " 256M");
        ulong refTableAt = RefcountTableOffset(img);
        const int Slot = 128 << 10, SlotsPerRound = 512; // 64 MiB a round
        for (int round = 0; round < 3; round++)
        {
            var rng = new Random(1000 + round);
            int[] order = new int[SlotsPerRound];
            for (int i = 0; i < order.Length; i++) order[i] = i;
            rng.Shuffle(order);
            var lengths = new int[SlotsPerRound];
            var starts = new long[SlotsPerRound];
            var seeds = new int[SlotsPerRound];
            int durable = 0; // writes [0, durable) were fsynced
            ServerProcess s = ServerProcess.Start("--backend qcow2:" + img);
            Exception? ended = null;
            int written = 0;
            var writer = new Thread(() =>
            {
                try
                {
                    using var f = new FileStream(s.DevicePath, FileMode.Open, FileAccess.Write, FileShare.ReadWrite, 0);
                    for (int i = 0; i < SlotsPerRound; i++)
                    {
                        long slotStart = (long)round * SlotsPerRound * Slot + (long)order[i] * Slot;
                        starts[i] = slotStart + 4096L * rng.Next(0, 8);
                        lengths[i] = 4096 * rng.Next(1, 25);
                        seeds[i] = rng.Next();
                        f.Position = starts[i];
                        f.Write(Pattern(seeds[i], lengths[i]));
                        written = i + 1;
                        if (written % 8 == 0)
                        {
                            f.Flush(flushToDisk: true);
                            Volatile.Write(ref durable, written);
                        }
                    }
                    f.Flush(flushToDisk: true);
                    Volatile.Write(ref durable, written);
                }
                catch (Exception e) { ended = e; }
            });
            writer.Start();
            // Kill somewhere in the middle: after a share of the writes that differs each round.
            int killAt = 60 + 90 * round;
            Assert.True(SpinWait.SpinUntil(() => Volatile.Read(ref durable) >= killAt || !writer.IsAlive, 300_000), "the writer made no progress\n" + s.Stderr);
            Assert.True(writer.IsAlive, "the writer finished before the kill: " + ended);
            // What was flushed before the crash: an fsync that returns after SIGKILL is not counted (the kernel drops
            // a dead disk's dirty pages, and such an fsync was seen to return 0 for data that never reached us).
            int flushed = Volatile.Read(ref durable);
            KillAndDelete(s, writer);
            output.WriteLine("round " + round + ": " + written + " writes issued, " + flushed + " fsynced before the kill, " + durable + " in all, writer ended by " + ended?.GetType().Name);

            Result check = Check(img, leaksAllowed: true);
            output.WriteLine(check.Out.Trim());
            var writes = new (long, int, int)[flushed];
            for (int i = 0; i < flushed; i++) writes[i] = (starts[i], lengths[i], seeds[i]);
            AssertWritesInImage(img, writes, "round " + round);
        }
        // The image still serves and writes after three kills.
        using (ServerProcess s = ServerProcess.Start("--backend qcow2:" + img))
        {
            Sh("dd if=/dev/urandom of=" + s.DevicePath + " bs=64k count=16 seek=3000 oflag=direct status=none");
            Assert.Equal(0, s.Stop());
        }
        AssertNoDevices();
        Check(img, leaksAllowed: true);
        if (options.Contains("cluster_size=512"))
            Assert.True(RefcountTableOffset(img) != refTableAt, "the refcount table never moved: the 512-byte row did not exercise its growth");
    }

    /// <summary>
    /// A kill while a metadata write-back is in flight: 8 writers each write a fresh 4 KiB-cluster range and fsync
    /// at once, so nearly every instant of the run is inside a FLUSH (the write-back of dirty L2 tables and L1
    /// entries, docs/qcow2-design.md "Crash safety"). SIGKILL lands with fsyncs in flight (asserted in at least
    /// one round); afterwards `qemu-img check` finds no corruption (leaks allowed) and every write whose fsync
    /// returned before the kill reads back exactly, in this round and every earlier one.
    /// </summary>
    [Fact]
    public void Sigkill_during_write_back_from_many_fsyncing_writers_leaves_no_corruption_and_every_flushed_write()
    {
        string img = P("wb.qcow2");
        File.Delete(img);
        // 4 KiB clusters: one L2 table maps 2 MiB, so the writers' ranges dirty many tables per write-back.
        Sh("qemu-img create -q -f qcow2 -o cluster_size=4096 " + img + " 256M");
        const int Writers = 8, Slot = 64 << 10, SlotsPerWriter = 128; // 8 MiB a writer, 64 MiB a round
        var all = new System.Collections.Generic.List<(long Start, int Length, int Seed)>();
        int roundsKilledInFlush = 0;
        for (int round = 0; round < 3; round++)
        {
            var starts = new long[Writers][];
            var lengths = new int[Writers][];
            var seeds = new int[Writers][];
            var durable = new int[Writers];  // writer w's writes [0, durable[w]) were fsynced
            var inFsync = new int[Writers];  // 1 while writer w is inside fsync
            var ended = new Exception?[Writers];
            ServerProcess s = ServerProcess.Start("--backend qcow2:" + img);
            var threads = new Thread[Writers];
            for (int w = 0; w < Writers; w++)
            {
                int me = w;
                var rng = new Random(7000 + 31 * round + me);
                int[] order = new int[SlotsPerWriter];
                for (int i = 0; i < order.Length; i++) order[i] = i;
                rng.Shuffle(order);
                starts[me] = new long[SlotsPerWriter];
                lengths[me] = new int[SlotsPerWriter];
                seeds[me] = new int[SlotsPerWriter];
                for (int i = 0; i < SlotsPerWriter; i++)
                {
                    long slotStart = ((long)round * Writers + me) * SlotsPerWriter * Slot + (long)order[i] * Slot;
                    starts[me][i] = slotStart + 4096L * rng.Next(0, 4);
                    lengths[me][i] = 4096 * rng.Next(1, 9);
                    seeds[me][i] = rng.Next();
                }
                threads[me] = new Thread(() =>
                {
                    try
                    {
                        using var f = new FileStream(s.DevicePath, FileMode.Open, FileAccess.Write, FileShare.ReadWrite, 0);
                        for (int i = 0; i < SlotsPerWriter; i++)
                        {
                            f.Position = starts[me][i];
                            f.Write(Pattern(seeds[me][i], lengths[me][i]));
                            Volatile.Write(ref inFsync[me], 1);
                            f.Flush(flushToDisk: true);
                            Volatile.Write(ref inFsync[me], 0);
                            Volatile.Write(ref durable[me], i + 1);
                        }
                    }
                    catch (Exception e) { ended[me] = e; }
                });
                threads[me].Start();
            }
            int Total() { int t = 0; for (int w = 0; w < Writers; w++) t += Volatile.Read(ref durable[w]); return t; }
            bool AnyAlive() { foreach (Thread t in threads) if (t.IsAlive) return true; return false; }
            int killAt = 150 + 150 * round;
            Assert.True(SpinWait.SpinUntil(() => Total() >= killAt || !AnyAlive(), 300_000), "the writers made no progress\n" + s.Stderr);
            Assert.True(AnyAlive(), "the writers finished before the kill");
            // Take what was fsynced right before the kill: an fsync that returns after it does not count.
            var flushed = new int[Writers];
            int flushing = 0;
            for (int w = 0; w < Writers; w++)
            {
                flushed[w] = Volatile.Read(ref durable[w]);
                flushing += Volatile.Read(ref inFsync[w]);
            }
            KillAndDelete(s, threads);
            if (flushing > 0) roundsKilledInFlush++;
            int sum = 0;
            for (int w = 0; w < Writers; w++)
                for (int i = 0; i < flushed[w]; i++, sum++) all.Add((starts[w][i], lengths[w][i], seeds[w][i]));
            output.WriteLine("round " + round + ": " + sum + " writes fsynced before the kill, " + flushing + " writers inside fsync at the kill");

            Result check = Check(img, leaksAllowed: true);
            output.WriteLine(check.Out.Trim());
            AssertWritesInImage(img, all, "round " + round);
        }
        Assert.True(roundsKilledInFlush > 0, "no kill landed while an fsync was in flight: the test did not exercise a write-back");
    }

    /// <summary>SIGKILL of the server with writers running; they must end (with errors), and the device must go.</summary>
    private static void KillAndDelete(ServerProcess s, params Thread[] writers)
    {
        uint id = (uint)s.Id;
        Assert.Equal(128 + 9, s.Stop(sig: 9, timeoutMs: 30_000));
        foreach (Thread t in writers) Assert.True(t.Join(120_000), "a writer hung after SIGKILL of the server");
        s.DisposeKeepingDevice();
        Result del = UblkAot("del " + id);
        Assert.True(del.Code == 0, "del " + id + ": " + del);
        AssertNoDevices();
    }

    /// <summary>Every (start, length, pattern seed) write reads back exactly from `qemu-img convert -O raw` of the image.</summary>
    private void AssertWritesInImage(string image, System.Collections.Generic.IEnumerable<(long Start, int Length, int Seed)> writes, string when)
    {
        string raw = P("check.raw");
        Sh("qemu-img convert -O raw " + image + " " + raw);
        using (var r = new FileStream(raw, FileMode.Open, FileAccess.Read))
            foreach ((long start, int length, int seed) in writes)
            {
                byte[] got = new byte[length];
                r.Position = start;
                r.ReadExactly(got);
                Assert.True(got.AsSpan().SequenceEqual(Pattern(seed, length)), when + ": a write fsynced before a kill (" + length + " bytes at " + start + ") is not in the image");
            }
        File.Delete(raw);
    }

    /// <summary>The header's refcount_table_offset (big-endian, bytes 48..55).</summary>
    private static ulong RefcountTableOffset(string image)
    {
        byte[] h = new byte[8];
        using (var f = new FileStream(image, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
        {
            f.Position = 48;
            f.ReadExactly(h);
        }
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt64BigEndian(h);
    }

    private static byte[] Pattern(int seed, int length)
    {
        byte[] b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    [Fact]
    public void Bad_images_and_options_exit_2_with_one_line_and_no_device()
    {
        string snap = P("snap.qcow2"), notq = P("plain.raw");
        Sh("qemu-img create -q -f qcow2 " + snap + " 16M && qemu-img snapshot -c s1 " + snap);
        Sh("truncate -s 16M " + notq);
        string ok = P("ok.qcow2");
        Sh("qemu-img create -q -f qcow2 " + ok + " 16M");
        (string Args, string Says)[] cases =
        [
            ("--backend qcow2:" + P("none.qcow2"), "qcow2: image not found: " + P("none.qcow2")),
            ("--backend qcow2:" + notq, "not a qcow2 image"),
            ("--backend qcow2:" + snap, "internal snapshot(s): writing is not supported, serve it with --read-only"),
            ("--backend qcow2:" + ok + ",l2-cache=lots", "l2-cache"),
            ("--backend qcow2:" + ok + " --queues 2", "the backend serves at most 1 queue(s)"),
        ];
        foreach ((string args, string says) in cases)
        {
            Result r = UblkAot("serve " + args, 60_000);
            Assert.True(r.Code == 2, args + ": expected exit 2\n" + r);
            string err = r.Err.Trim();
            Assert.True(!err.Contains('\n') && err.Contains(says), args + ": expected one line saying '" + says + "'\n" + r);
            AssertNoDevices();
        }
        // The snapshot image serves read-only.
        using (ServerProcess s = ServerProcess.Start("--backend qcow2:" + snap + " --read-only"))
        {
            Sh("cmp -n 16777216 /dev/zero " + s.DevicePath);
            Assert.Equal(0, s.Stop());
        }
        AssertNoDevices();
    }
}
