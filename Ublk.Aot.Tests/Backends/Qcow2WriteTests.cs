using System;
using System.IO;
using System.Linq;
using Microsoft.Win32.SafeHandles;
using Ublk.Aot.Backends;
using Xunit;
using static Ublk.Aot.Tests.Integration.IntegrationEnv;

namespace Ublk.Aot.Tests.Backends;

/// <summary>
/// The qcow2 write path (issue 14 item 2), synchronously through Qcow2Image: random writes, zeroing and discards
/// against a model of the guest bytes, then qemu's own tools judge the image: `qemu-img check` finds no errors and
/// no leaks, and `qemu-img convert -O raw` equals the model. The served path (io_uring, a real device, SIGKILL
/// mid-write) is tested in the VM (Qcow2VmTests).
/// </summary>
public sealed class Qcow2WriteTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("ublk-qcow2w-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string P(string name) => Path.Combine(_dir, name);

    private static void RequireQemu() => Qcow2ImageTests.RequireQemu();

    /// <summary>qemu-img check must find nothing at all: no corruption and no leaked cluster.</summary>
    private static void AssertClean(string image)
    {
        Result r = Sh("qemu-img check " + image, check: false);
        Assert.True(r.Code == 0 && r.Out.Contains("No errors were found"), "qemu-img check " + image + ":\n" + r);
        Assert.DoesNotContain("leaked", r.Out);
    }

    private static void AssertEqualsModel(string image, byte[] model)
    {
        string raw = image + ".raw";
        Sh("qemu-img convert -O raw " + image + " " + raw);
        byte[] got = File.ReadAllBytes(raw);
        Assert.Equal(model.Length, got.Length);
        for (int i = 0; i < model.Length; i++)
            if (model[i] != got[i]) Assert.Fail(image + ": byte " + i + " is 0x" + got[i].ToString("x2") + " by qemu, the model says 0x" + model[i].ToString("x2"));
    }

    /// <summary>
    /// Random writes (odd offsets and lengths, across clusters), zeroing (unmap and keep) and discards; the model
    /// follows. A discard reads as zeros afterwards, as a hole punched in a raw file does, except on v2 with a
    /// backing file, where it is dropped.
    /// </summary>
    private static void Churn(Qcow2Image q, byte[] model, int seed, int ops)
    {
        var rng = new Random(seed);
        int size = model.Length;
        int cs = q.Header.ClusterSize;
        for (int i = 0; i < ops; i++)
        {
            int kind = rng.Next(10);
            int len = rng.Next(4) switch { 0 => rng.Next(1, 600), 1 => rng.Next(1, cs + 1), 2 => rng.Next(1, 3 * cs), _ => 512 * rng.Next(1, 64) };
            len = Math.Min(len, size);
            int at = rng.Next(0, size - len + 1);
            if (kind < 7)
            {
                byte[] data = new byte[len];
                rng.NextBytes(data);
                q.Write((ulong)at, data, fua: rng.Next(8) == 0);
                data.CopyTo(model, at);
            }
            else if (kind < 9)
            {
                q.Zero((ulong)at, (ulong)len, discard: false, keepAllocated: kind == 8, fua: false);
                Array.Clear(model, at, len);
            }
            else
            {
                q.Zero((ulong)at, (ulong)len, discard: true, keepAllocated: false, fua: false);
                if (q.Header.Version == 2 && q.HasBacking) continue;
                Array.Clear(model, at, len);
            }
        }
    }

    [Theory]
    [InlineData("compat=0.10,cluster_size=65536", false)]
    [InlineData("compat=0.10,cluster_size=4096", true)]
    [InlineData("compat=1.1,cluster_size=4096", false)]
    [InlineData("compat=1.1,cluster_size=65536", true)]
    [InlineData("compat=1.1,cluster_size=2M", false)]
    [InlineData("compat=1.1,cluster_size=65536,extended_l2=on", true)]
    [InlineData("compat=1.1,cluster_size=65536,extended_l2=on", false)]
    [InlineData("compat=1.1,cluster_size=65536,refcount_bits=64", false)]
    public void Writes_that_qemu_img_check_calls_clean_and_convert_reads_back(string options, bool backing)
    {
        RequireQemu();
        const int size = 12 << 20;
        byte[] model = new byte[size];
        string img = P("w.qcow2");
        if (backing)
        {
            string b = P("base.raw");
            var rng = new Random(7);
            byte[] baseBytes = new byte[10 << 20]; // smaller than the image: past its end reads zeros
            rng.NextBytes(baseBytes);
            File.WriteAllBytes(b, baseBytes);
            baseBytes.CopyTo(model, 0);
            Sh("cd " + _dir + " && qemu-img create -q -f qcow2 -o " + options + " -b base.raw -F raw w.qcow2 " + size);
        }
        else Sh("qemu-img create -q -f qcow2 -o " + options + " " + img + " " + size);
        long allocated;
        using (Qcow2Image q = Qcow2Image.Open(img, writable: true, l2CacheBytes: 64 << 10)) // a small cache: evictions happen
        {
            Churn(q, model, seed: options.Length + (backing ? 1 : 0), ops: 400);
            allocated = q.ClustersAllocated;
        }
        Assert.True(allocated > 10, "only " + allocated + " clusters were allocated");
        AssertClean(img);
        AssertEqualsModel(img, model);
        // And our own reader, reopened, agrees.
        using (Qcow2Image q = Qcow2Image.Open(img))
        {
            byte[] got = new byte[size];
            q.Read(0, got);
            Assert.True(got.AsSpan().SequenceEqual(model), "Qcow2Image reads back something else than it wrote");
        }
    }

    [Fact]
    public void Writes_over_compressed_clusters_copy_them_and_drop_their_refcounts()
    {
        RequireQemu();
        string src = P("src.qcow2"), img = P("c.qcow2");
        Sh("qemu-img create -q -f qcow2 " + src + " 8M");
        Sh("qemu-io -f qcow2 " + src + " -c 'write -P 0x61 0 3M' -c 'write -P 0x62 5M 1M' >/dev/null");
        Sh("qemu-img convert -c -O qcow2 " + src + " " + img);
        string raw = P("src.raw");
        Sh("qemu-img convert -O raw " + src + " " + raw);
        byte[] model = File.ReadAllBytes(raw);
        using (Qcow2Image q = Qcow2Image.Open(img, writable: true))
        {
            Assert.Equal(Qcow2Kind.Compressed, q.Map(64 << 10).Kind);
            Churn(q, model, seed: 3, ops: 200);
        }
        AssertClean(img);
        AssertEqualsModel(img, model);
    }

    [Fact]
    public void The_image_grows_as_it_fills_and_a_reopened_image_allocates_after_its_end()
    {
        RequireQemu();
        string img = P("g.qcow2");
        Sh("qemu-img create -q -f qcow2 " + img + " 64M");
        long before = new FileInfo(img).Length;
        byte[] model = new byte[64 << 20];
        byte[] data = new byte[1 << 20];
        for (int round = 0; round < 3; round++)
        {
            using Qcow2Image q = Qcow2Image.Open(img, writable: true);
            new Random(round).NextBytes(data);
            q.Write((ulong)(round * 20 << 20) + 4096, data, fua: false);
            data.CopyTo(model, (round * 20 << 20) + 4096);
        }
        Assert.True(new FileInfo(img).Length >= before + (3 << 20), "the image did not grow: " + new FileInfo(img).Length + " bytes");
        AssertClean(img);
        AssertEqualsModel(img, model);
    }

    /// <summary>
    /// 512-byte clusters make a one-cluster refcount table cover little (64 entries: 2 MiB of file with 64-bit
    /// refcounts, 8 MiB with 16-bit ones), so filling a 12 MiB image outgrows it (with 64-bit refcounts three times:
    /// 64 → 128 → 256 → 512 entries): the table moves to a larger one at the end of the file, qemu-img check stays
    /// clean (no leak: the old table's clusters are freed) and reads back the model; reopened, the image is found
    /// through the moved table and takes more writes.
    /// </summary>
    [Theory]
    [InlineData("compat=1.1,cluster_size=512,refcount_bits=64")]
    [InlineData("compat=1.1,cluster_size=512")]
    [InlineData("compat=0.10,cluster_size=512")]
    public void A_refcount_table_the_image_outgrows_moves_to_a_larger_one(string options)
    {
        RequireQemu();
        const int size = 12 << 20;
        string img = P("r.qcow2");
        Sh("qemu-img create -q -f qcow2 -o " + options + " " + img + " " + size);
        byte[] model = new byte[size];
        var rng = new Random(options.Length);
        int growths;
        using (Qcow2Image q = Qcow2Image.Open(img, writable: true, l2CacheBytes: 16 << 10))
        {
            byte[] data = new byte[256 << 10];
            for (int at = 0; at < size; at += data.Length)
            {
                rng.NextBytes(data);
                q.Write((ulong)at, data, fua: false);
                data.CopyTo(model, at);
            }
            growths = q.RefcountTableGrowths;
        }
        Assert.True(growths >= (options.Contains("refcount_bits=64") ? 3 : 1), "the refcount table grew " + growths + " time(s)");
        AssertClean(img);
        AssertEqualsModel(img, model);
        using (Qcow2Image q = Qcow2Image.Open(img, writable: true, l2CacheBytes: 16 << 10))
        {
            Churn(q, model, seed: 11, ops: 300);
        }
        AssertClean(img);
        AssertEqualsModel(img, model);
    }

    /// <summary>
    /// Metadata is written back, not through: 100 writes into new clusters cost no fdatasync; a copy of the file taken
    /// then (what a crash would leave) is free of errors for qemu-img check, holds everything written back before, and
    /// reads zeros where the later writes went (they were never flushed). WriteBack (what FLUSH does) makes them all
    /// durable with two fdatasyncs, and the image is clean.
    /// </summary>
    [Fact]
    public void Allocating_writes_share_one_write_back_and_a_crash_before_it_loses_only_those_writes()
    {
        RequireQemu();
        const int size = 64 << 20, cs = 64 << 10, n = 100;
        string img = P("wb.qcow2"), crashed = P("crashed.qcow2");
        Sh("qemu-img create -q -f qcow2 -o cluster_size=65536 " + img + " " + size);
        byte[] model = new byte[size], flushed = new byte[size];
        var rng = new Random(5);
        using (Qcow2Image q = Qcow2Image.Open(img, writable: true))
        {
            void Batch(int from)
            {
                for (int i = from; i < from + n; i++)
                {
                    byte[] data = new byte[4096];
                    rng.NextBytes(data);
                    int at = i * cs + 4096 * rng.Next(0, 16);
                    q.Write((ulong)at, data, fua: false);
                    data.CopyTo(model, at);
                }
            }
            Batch(0);
            q.WriteBack();
            model.CopyTo(flushed, 0);
            long syncs = q.Syncs;
            Batch(n);
            Assert.True(q.Syncs == syncs, (q.Syncs - syncs) + " fdatasyncs for " + n + " allocating writes without a flush");
            Assert.True(q.HasUnwrittenMetadata);
            File.Copy(img, crashed);
            q.WriteBack();
            Assert.True(q.Syncs - syncs == 2, "a write-back took " + (q.Syncs - syncs) + " fdatasyncs");
            Assert.False(q.HasUnwrittenMetadata);
            AssertClean(img);
            AssertEqualsModel(img, model);
        }
        Result check = Sh("qemu-img check " + crashed, check: false);
        Assert.True(check.Code is 0 or 3 && !check.Out.Contains("ERROR"), "qemu-img check of the crashed copy:\n" + check);
        Assert.Contains("leaked", check.Out); // the second batch's clusters: referenced by nothing, refcount 1
        AssertEqualsModel(crashed, flushed);
    }

    /// <summary>
    /// The allocating write whose data goes as an SQE (Qcow2Backend): TryAllocateForWrite allocates a new cluster
    /// past the end of the file and points the cached entry at it before the data is written. Here the "SQE" is a
    /// pwrite through another handle, done for half the writes before a write-back and for the rest after it: the
    /// copy taken between (a crash while those writes were in flight) must be clean and read zeros where their data
    /// was missing, which is what those ranges read before; the finished image clean and equal to the model.
    /// </summary>
    [Theory]
    [InlineData("compat=1.1,cluster_size=65536")]
    [InlineData("compat=0.10,cluster_size=4096")]
    [InlineData("compat=1.1,cluster_size=65536,extended_l2=on")]
    public void Clusters_allocated_ahead_of_an_sqe_write_read_as_zeros_until_it_lands_and_check_clean(string options)
    {
        RequireQemu();
        const int size = 16 << 20, writes = 60;
        string img = P("s.qcow2"), crashed = P("s-crashed.qcow2");
        Sh("qemu-img create -q -f qcow2 -o " + options + " " + img + " " + size);
        byte[] model = new byte[size], early = new byte[size];
        var rng = new Random(options.Length);
        var late = new System.Collections.Generic.List<(long Host, byte[] Data)>();
        using (SafeFileHandle h = File.OpenHandle(img, FileMode.Open, FileAccess.ReadWrite))
        {
            using (Qcow2Image q = Qcow2Image.Open(img, writable: true, l2CacheBytes: 64 << 10))
            {
                int cs = q.Header.ClusterSize, clusters = size / cs;
                var used = new System.Collections.Generic.HashSet<int>();
                for (int i = 0; i < writes; i++)
                {
                    int c;
                    do c = rng.Next(clusters); while (!used.Add(c));
                    int inCluster = rng.Next(cs), len = rng.Next(1, cs - inCluster + 1);
                    ulong at = (ulong)c * (ulong)cs + (ulong)inCluster;
                    long fileBefore = RandomAccess.GetLength(h);
                    Assert.False(q.Map(at).InPlace);
                    Assert.True(q.TryAllocateForWrite(at), "cluster " + c + " of a fresh image was not allocated for an SQE");
                    Qcow2Mapping m = q.Map(at);
                    Assert.True(m.Kind == Qcow2Kind.Data && m.InPlace, "after TryAllocateForWrite: " + m);
                    Assert.True(m.Host - (ulong)inCluster >= (ulong)fileBefore, "the new cluster 0x" + m.Host.ToString("x") + " is inside the file (" + fileBefore + " bytes)");
                    byte[] got = new byte[len];
                    q.Read(at, got);
                    Assert.True(got.AsSpan().IndexOfAnyExcept((byte)0) < 0, "a cluster allocated ahead of its data does not read as zeros");
                    byte[] data = new byte[len];
                    rng.NextBytes(data);
                    data.CopyTo(model, (int)at);
                    if (i % 2 == 0)
                    {
                        RandomAccess.Write(h, data, (long)m.Host);
                        data.CopyTo(early, (int)at);
                    }
                    else late.Add(((long)m.Host, data));
                }
                Assert.Equal(writes, q.AllocatedForSqe);
                q.WriteBack();
                File.Copy(img, crashed);
                foreach ((long host, byte[] data) in late) RandomAccess.Write(h, data, host);
                q.WriteBack();
            }
        }
        AssertClean(crashed);
        AssertEqualsModel(crashed, early);
        AssertClean(img);
        AssertEqualsModel(img, model);
    }

    /// <summary>
    /// Where an SQE write could show a byte the guest never wrote or lose one it did, TryAllocateForWrite refuses and
    /// changes nothing: a cluster over backing data, a compressed cluster, an allocated zero-flagged cluster (its host
    /// cluster holds old bytes); an unallocated cluster of an image with a backing file at all. A zero-flagged
    /// cluster with no host cluster reads as zeros and is taken.
    /// </summary>
    [Fact]
    public void Clusters_whose_old_bytes_an_sqe_write_would_lose_are_refused_for_it()
    {
        RequireQemu();
        string b = P("base.raw"), img = P("r.qcow2"), comp = P("comp.qcow2");
        File.WriteAllBytes(b, new byte[1 << 20].Select((_, i) => (byte)(i * 7 + 1)).ToArray());
        Sh("cd " + _dir + " && qemu-img create -q -f qcow2 -o cluster_size=65536 -b base.raw -F raw r.qcow2 4M");
        using (Qcow2Image q = Qcow2Image.Open(img, writable: true))
        {
            Assert.False(q.TryAllocateForWrite(100));              // backing data under it
            Assert.Equal(Qcow2Kind.Unallocated, q.Map(100).Kind);
            Assert.False(q.TryAllocateForWrite(2 << 20));           // unallocated shows the backing file (here past its end: not looked at)
            q.Zero(2 << 20, 64 << 10, discard: true, keepAllocated: false, fua: false);
            Assert.Equal(Qcow2Kind.Zero, q.Map(2 << 20).Kind);     // zero-flagged, no host cluster: reads as zeros
            Assert.True(q.TryAllocateForWrite(2 << 20));
            Assert.True(q.Map(2 << 20).InPlace);
            q.Write(3 << 20, new byte[4096].Select(_ => (byte)9).ToArray(), fua: false);
            q.Zero(3 << 20, 64 << 10, discard: false, keepAllocated: true, fua: false);
            Assert.Equal(Qcow2Kind.Zero, q.Map(3 << 20).Kind);
            Assert.False(q.TryAllocateForWrite(3 << 20));           // allocated, zero-flagged: old bytes in its cluster
            Assert.Equal(1, q.AllocatedForSqe);
        }
        Sh("qemu-img create -q -f qcow2 " + P("src.qcow2") + " 4M");
        Sh("qemu-io -f qcow2 " + P("src.qcow2") + " -c 'write -P 0x61 0 1M' >/dev/null");
        Sh("qemu-img convert -c -O qcow2 " + P("src.qcow2") + " " + comp);
        using (Qcow2Image q = Qcow2Image.Open(comp, writable: true))
        {
            Assert.Equal(Qcow2Kind.Compressed, q.Map(0).Kind);
            Assert.False(q.TryAllocateForWrite(0));
            Assert.Equal(0, q.AllocatedForSqe);
        }
        AssertClean(img);
        AssertClean(comp);
    }

    [Fact]
    public void Images_that_cannot_be_written_safely_are_refused_for_writing_and_served_read_only()
    {
        RequireQemu();
        string snap = P("s.qcow2");
        Sh("qemu-img create -q -f qcow2 " + snap + " 4M");
        Sh("qemu-img snapshot -c one " + snap);
        var e = Assert.Throws<SpecException>(() => Qcow2Image.Open(snap, writable: true));
        Assert.Equal("qcow2: " + snap + ": the image has 1 internal snapshot(s): writing is not supported, serve it with --read-only", e.Message);
        Qcow2Image.Open(snap).Dispose();

        // A dirty image: lazy refcounts, and qemu-io stopped without closing it (abort).
        string dirty = P("d.qcow2");
        Sh("qemu-img create -q -f qcow2 -o lazy_refcounts=on " + dirty + " 4M");
        Sh("qemu-io -f qcow2 " + dirty + " -c 'write -P 0x11 0 64k' -c abort >/dev/null 2>&1", check: false);
        using (Qcow2Image r = Qcow2Image.Open(dirty)) Assert.True(r.Header.Dirty, "qemu-io abort did not leave the dirty bit");
        e = Assert.Throws<SpecException>(() => Qcow2Image.Open(dirty, writable: true));
        Assert.Contains("the image is dirty", e.Message);
        Assert.Contains("qemu-img check -r all", e.Message);
    }
}
