using System;
using System.Threading;
using Ublk.Aot.Abi;
using Ublk.Aot.Backends;
using Xunit;
using static Ublk.Aot.Abi.UblkConst;
using global::Ublk.Aot.Ublk;

namespace Ublk.Aot.Tests.Backends;

/// <summary>A queue without a kernel: its tag buffers are the copy mode's strategy, mapped without a ring.</summary>
internal sealed class HostQueue : UblkQueue
{
    public HostQueue(int depth, uint maxIo) : base(new QueueGeometry(0, 0, depth, maxIo), MapBuffers(depth, maxIo)) { }

    private static TagBuffers MapBuffers(int depth, uint maxIo)
    {
        var b = new TagBuffers(new BufferOptions(TimeSpan.Zero, Fixed: false, Huge: false));
        b.SetUp(new QueueGeometry(0, 0, depth, maxIo), ring: null);
        return b;
    }

    public override void RequestStop() { }
    public override void RequestHandOver() { }
    public override bool EndedClean => true;
    internal override bool Join(TimeSpan timeout) => true;
    internal override void Start(CountdownEvent ready, ManualResetEventSlim exited) => throw new NotSupportedException();
    internal override void Join() { }
    internal override Exception? Failure => null;
    public override void Finish(ushort tag, int result) => throw new NotSupportedException("no ring: host backends complete inline");

    public void Free() => BufferStrategy.Dispose();
}

public sealed class BackendTests
{
    private static ublksrv_io_desc Desc(byte op, ulong offset, int length, uint flags = 0)
        => new() { op_flags = op | flags, start_sector = offset >> 9, nr_sectors = (uint)(length >> 9) };

    /// <summary>Runs reads, writes, flushes, discards and write-zeroes through a backend, checking data against a model.</summary>
    private static long Exercise<T>(ref T backend, HostQueue q, byte[] model, int ios, int seed, bool checkData) where T : struct, IBackend
    {
        var rnd = new Random(seed);
        long failures = 0;
        for (int i = 0; i < ios; i++)
        {
            ushort tag = (ushort)(i % q.Depth);
            int len = rnd.Next(1, 33) * 512;
            ulong off = (ulong)rnd.Next(0, (model.Length - len) / 512) * 512;
            int kind = rnd.Next(10);
            byte op = kind < 4 ? UBLK_IO_OP_WRITE : kind < 8 ? UBLK_IO_OP_READ : kind == 8 ? UBLK_IO_OP_FLUSH : (i % 2 == 0 ? UBLK_IO_OP_DISCARD : UBLK_IO_OP_WRITE_ZEROES);
            Span<byte> buf = q.Buffers!.Span(tag, len);
            if (op == UBLK_IO_OP_WRITE) buf.Fill((byte)i);
            ublksrv_io_desc d = Desc(op, off, len);
            int r = backend.Submit(q, tag, in d);
            if (r < 0) { failures++; continue; }
            int expect = op is UBLK_IO_OP_READ or UBLK_IO_OP_WRITE ? len : 0;
            if (r != expect) throw new Xunit.Sdk.XunitException("op " + op + " at " + off + " returned " + r + ", expected " + expect);
            if (!checkData) continue;
            Span<byte> m = model.AsSpan((int)off, len);
            switch (op)
            {
                case UBLK_IO_OP_WRITE: buf.CopyTo(m); break;
                case UBLK_IO_OP_DISCARD:
                case UBLK_IO_OP_WRITE_ZEROES: m.Clear(); break;
                case UBLK_IO_OP_READ:
                    if (!buf.SequenceEqual(m))
                        throw new Xunit.Sdk.XunitException("read at " + off + " differs from the model (seed " + seed + ", io " + i + ")");
                    break;
            }
        }
        return failures;
    }

    [Fact]
    public void Mem_backend_matches_a_model_and_allocates_nothing_per_io()
    {
        const int size = 8 << 20;
        var q = new HostQueue(16, 64 * 1024);
        using var store = new MemStore(size);
        try
        {
            var b = new MemBackend(store);
            b.Attach(q);
            var model = new byte[size];
            Exercise(ref b, q, model, 2_000, 1, checkData: true); // warm-up
            long before = GC.GetAllocatedBytesForCurrentThread();
            Exercise(ref b, q, model, 20_000, 2, checkData: true);
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            // Exercise itself allocates one Random; the backend must add nothing per I/O.
            Assert.True(allocated < 1024, "20k mem-backend I/Os allocated " + allocated + " bytes");
            Assert.True(store.Slice(0, size).SequenceEqual(model), "store differs from the model");
        }
        finally { q.Free(); }
    }

    [Fact]
    public void Mem_zero_releases_whole_pages_and_clears_edges()
    {
        using var store = new MemStore(1 << 20);
        store.Slice(0, 1 << 20).Fill(0xAB);
        Assert.Equal(0, store.Zero(1000, 10_000));
        Assert.Equal(0xAB, store.Slice(999, 1)[0]);
        Assert.True(store.Slice(1000, 10_000).IndexOfAnyExcept((byte)0) < 0);
        Assert.Equal(0xAB, store.Slice(11_000, 1)[0]);
        Assert.Equal(-Interop.Errno.EINVAL, store.Zero((1 << 20) - 512, 1024));
    }

    [Fact]
    public void Fault_backend_fails_the_chosen_fraction_and_nothing_else()
    {
        const int size = 4 << 20;
        var q = new HostQueue(8, 64 * 1024);
        using var store = new MemStore(size);
        try
        {
            var cfg = new FaultConfig { Rate = 0.25, OpMask = FaultOps.Write, Seed = 42 };
            var b = new FaultBackend<MemBackend>(new MemBackend(store), cfg);
            b.Attach(q);
            var model = new byte[size];
            long failed = Exercise(ref b, q, model, 20_000, 3, checkData: false);
            Assert.Equal(cfg.Injected, failed);
            double writes = 20_000 * 0.4;
            Assert.InRange(failed, (long)(writes * 0.2), (long)(writes * 0.3));

            var all = new FaultConfig { Rate = 1.0, OpMask = FaultOps.Read };
            var r = new FaultBackend<MemBackend>(new MemBackend(store), all);
            r.Attach(q);
            ublksrv_io_desc read = Desc(UBLK_IO_OP_READ, 0, 4096);
            ublksrv_io_desc write = Desc(UBLK_IO_OP_WRITE, 0, 4096);
            for (int i = 0; i < 100; i++)
            {
                Assert.Equal(-Interop.Errno.EIO, r.Submit(q, 0, in read));
                Assert.Equal(4096, r.Submit(q, 0, in write));
            }
        }
        finally { q.Free(); }
    }

    [Fact]
    public void Null_backend_completes_everything_at_once()
    {
        var q = new HostQueue(4, 4096);
        try
        {
            var b = new NullBackend();
            ublksrv_io_desc r = Desc(UBLK_IO_OP_READ, 0, 4096);
            ublksrv_io_desc f = Desc(UBLK_IO_OP_FLUSH, 0, 0);
            Assert.Equal(4096, b.Submit(q, 0, in r));
            Assert.Equal(0, b.Submit(q, 0, in f));
        }
        finally { q.Free(); }
    }
}
