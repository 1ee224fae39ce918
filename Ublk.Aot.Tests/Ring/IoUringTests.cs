using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Threading;
using Ublk.Aot.Abi;
using Ublk.Aot.Interop;
using Ublk.Aot.Ring;
using Xunit;
using static Ublk.Aot.Abi.IoUringConst;

namespace Ublk.Aot.Tests.Ring;

/// <summary>
/// <see cref="IoUring"/> against the host kernel's io_uring: setup variants, NOP and file round trips,
/// a full SQ, cancellation (busy and blocked owner), CQ overflow, a randomized run against a byte[] model,
/// zero allocation per entry and the wait timeout.
/// </summary>
public sealed unsafe class IoUringTests
{
    // ---------------------------------------------------------------- helpers

    /// <summary>Errno name for a message; tolerates the "not set" sentinel int.MinValue.</summary>
    private static string En(int rc) => rc == int.MinValue ? "unset" : Errno.Name(rc);

    private struct CollectHandler : ICqeHandler
    {
        public List<(ulong UserData, int Res, uint Flags)> Cqes;
        public void OnCqe(ulong userData, int res, uint flags) => Cqes.Add((userData, res, flags));
    }

    private struct CountHandler : ICqeHandler
    {
        public long Count;
        public long BadRes;
        public ulong MaxUserData;
        public void OnCqe(ulong userData, int res, uint flags)
        {
            Count++;
            if (res != 0) BadRes++;
            if (userData > MaxUserData) MaxUserData = userData;
        }
    }

    /// <summary>Marks each user_data in <see cref="Seen"/>; counts duplicates, out-of-range ids and non-zero results.</summary>
    private struct SeenHandler : ICqeHandler
    {
        public bool[] Seen;
        public int Count, Duplicates, OutOfRange, BadRes;
        public ulong FirstBad;
        public void OnCqe(ulong userData, int res, uint flags)
        {
            Count++;
            if (res != 0) { BadRes++; FirstBad = userData; }
            if (userData == 0 || userData >= (ulong)Seen.Length) { OutOfRange++; FirstBad = userData; return; }
            if (Seen[userData]) { Duplicates++; FirstBad = userData; }
            Seen[userData] = true;
        }
    }

    private static List<(ulong UserData, int Res, uint Flags)> Drain(IoUring ring)
    {
        var h = new CollectHandler { Cqes = new() };
        ring.DrainCompletions(ref h);
        return h.Cqes;
    }

    /// <summary>Submits what is pending and reaps until <paramref name="count"/> CQEs arrived (5 s limit).</summary>
    private static List<(ulong UserData, int Res, uint Flags)> SubmitAndCollect(IoUring ring, int count)
    {
        var h = new CollectHandler { Cqes = new() };
        var sw = Stopwatch.StartNew();
        while (h.Cqes.Count < count)
        {
            int rc = ring.SubmitAndWait(1, 1_000_000_000);
            Assert.True(rc >= 0 || rc == -Errno.ETIME || rc == -Errno.EINTR, $"SubmitAndWait returned {rc} ({En(rc)})");
            ring.DrainCompletions(ref h);
            Assert.True(sw.ElapsedMilliseconds < 5000,
                $"only {h.Cqes.Count} of {count} completions after {sw.ElapsedMilliseconds} ms");
        }
        Assert.True(h.Cqes.Count == count, $"expected {count} completions, got {h.Cqes.Count}");
        return h.Cqes;
    }

    private static ref io_uring_sqe Sqe(IoUring ring)
    {
        ref io_uring_sqe sqe = ref ring.GetSqe();
        Assert.False(Unsafe.IsNullRef(ref sqe), $"GetSqe returned null with SqPending={ring.SqPending}, SqEntries={ring.SqEntries}");
        return ref sqe;
    }

    private static void AssertRes(int expected, (ulong UserData, int Res, uint Flags) cqe, string what)
        => Assert.True(cqe.Res == expected,
            $"{what} (user_data {cqe.UserData}): res {cqe.Res}{(cqe.Res < 0 ? " (" + En(cqe.Res) + ")" : "")}, expected {expected}");

    /// <summary>A temporary regular file, open O_RDWR, deleted on dispose.</summary>
    private sealed class TempFile : IDisposable
    {
        public readonly string Path;
        public readonly int Fd;

        public TempFile(long size)
        {
            Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "ublk-aot-ring-" + Guid.NewGuid().ToString("N"));
            Fd = Libc.Open(Path, Libc.O_RDWR | Libc.O_CREAT | Libc.O_EXCL | Libc.O_CLOEXEC, 0x180);
            if (Fd < 0) throw new SysException("open(" + Path + ")", Errno.Last);
            if (size > 0) SysException.Check(Libc.FTruncate(Fd, size), "ftruncate");
        }

        public long Size
        {
            get
            {
                Libc.StatBuf st;
                SysException.Check(Libc.FStat(Fd, &st), "fstat");
                return st.st_size;
            }
        }

        public byte[] PRead(long offset, int len)
        {
            var b = new byte[len];
            fixed (byte* p = b)
            {
                nint n = Libc.PRead(Fd, p, (nuint)len, offset);
                Assert.True(n == len, $"pread({offset}, {len}) returned {n} (errno {En(Errno.Last)})");
            }
            return b;
        }

        public void Dispose()
        {
            Libc.Close(Fd);
            try { File.Delete(Path); } catch (IOException) { }
        }
    }

    /// <summary>Native, page-aligned, zeroed memory.</summary>
    private sealed class NativeBuf : IDisposable
    {
        public readonly byte* Ptr;
        public readonly int Length;
        public NativeBuf(int length)
        {
            Length = length;
            Ptr = (byte*)NativeMemory.AlignedAlloc((nuint)length, 4096);
            NativeMemory.Clear(Ptr, (nuint)length);
        }
        public Span<byte> Span => new(Ptr, Length);
        public ulong Addr(int offset = 0) => (ulong)(Ptr + offset);
        public void Dispose() => NativeMemory.AlignedFree(Ptr);
    }

    /// <summary>Index of the first differing byte, or -1.</summary>
    private static int FirstDiff(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b)
    {
        int n = Math.Min(a.Length, b.Length);
        for (int i = 0; i < n; i++) if (a[i] != b[i]) return i;
        return a.Length == b.Length ? -1 : n;
    }

    private static void AssertBytes(ReadOnlySpan<byte> expected, ReadOnlySpan<byte> actual, string what)
    {
        int d = FirstDiff(expected, actual);
        if (d < 0) return;
        string e = d < expected.Length ? expected[d].ToString("x2") : "<end>";
        string a = d < actual.Length ? actual[d].ToString("x2") : "<end>";
        Assert.Fail($"{what}: first difference at byte {d}: expected {e}, got {a} (lengths {expected.Length}/{actual.Length})");
    }

    private static void NopRoundTrip(IoUring ring, ulong userData)
    {
        IoUring.PrepNop(ref Sqe(ring), userData);
        var cqes = SubmitAndCollect(ring, 1);
        Assert.True(cqes[0].UserData == userData, $"NOP came back with user_data {cqes[0].UserData}, expected {userData}");
        AssertRes(0, cqes[0], "NOP");
    }

    // ---------------------------------------------------------------- 1. setup variants

    [Fact]
    public void Setup_Default_GivesPowerOfTwoRingsWithSqe64()
    {
        using var ring = new IoUring(8, IoUringOptions.Default);
        Assert.True(ring.Fd >= 0, $"Fd {ring.Fd}");
        Assert.True(ring.SqEntries == 8, $"SqEntries {ring.SqEntries}, expected 8");
        Assert.True(ring.CqEntries == 16, $"CqEntries {ring.CqEntries}, expected 16 (twice the SQ)");
        Assert.True(ring.SetupFlags == 0, $"SetupFlags 0x{ring.SetupFlags:x}, expected 0");
        Assert.False(ring.IsSqe128, "IsSqe128 on a default ring");
        uint need = IORING_FEAT_SINGLE_MMAP | IORING_FEAT_NODROP | IORING_FEAT_EXT_ARG;
        Assert.True((ring.Features & need) == need, $"Features 0x{ring.Features:x} lack 0x{need & ~ring.Features:x}");
        Assert.True(ring.SqPending == 0 && ring.SqSpace == 8, $"fresh ring: SqPending {ring.SqPending}, SqSpace {ring.SqSpace}");

        ref io_uring_sqe a = ref Sqe(ring);
        Assert.True(ring.CmdPayload(ref a).Length == URING_CMD_PAYLOAD_SQE64,
            $"CmdPayload length {ring.CmdPayload(ref a).Length}, expected {URING_CMD_PAYLOAD_SQE64}");
        IoUring.PrepNop(ref a, 1);
        ref io_uring_sqe b = ref Sqe(ring);
        long stride = (long)Unsafe.ByteOffset(ref a, ref b);
        Assert.True(stride == SQE_SIZE, $"consecutive SQEs {stride} bytes apart, expected {SQE_SIZE}");
        IoUring.PrepNop(ref b, 2);
        var cqes = SubmitAndCollect(ring, 2);
        Assert.True(cqes[0].UserData == 1 && cqes[1].UserData == 2, $"user_data {cqes[0].UserData},{cqes[1].UserData}, expected 1,2");
    }

    [Fact]
    public void Setup_Sqe128_Gives80BytePayloadAnd128ByteStride()
    {
        using var ring = new IoUring(4, new IoUringOptions { Sqe128 = true });
        Assert.True(ring.IsSqe128, "IsSqe128 false with Sqe128 = true");
        Assert.True((ring.SetupFlags & IORING_SETUP_SQE128) != 0, $"SetupFlags 0x{ring.SetupFlags:x} lack SQE128");

        ref io_uring_sqe a = ref Sqe(ring);
        Span<byte> payload = ring.CmdPayload(ref a);
        Assert.True(payload.Length == URING_CMD_PAYLOAD_SQE128, $"CmdPayload length {payload.Length}, expected {URING_CMD_PAYLOAD_SQE128}");
        long payloadOffset = (long)Unsafe.ByteOffset(ref Unsafe.As<io_uring_sqe, byte>(ref a), ref payload[0]);
        Assert.True(payloadOffset == 48, $"CmdPayload starts {payloadOffset} bytes into the SQE, expected 48");
        payload.Fill(0xA5); // must stay inside this 128-byte slot
        ref io_uring_sqe b = ref Sqe(ring);
        long stride = (long)Unsafe.ByteOffset(ref a, ref b);
        Assert.True(stride == SQE128_SIZE, $"consecutive SQEs {stride} bytes apart, expected {SQE128_SIZE}");
        Assert.True(b.opcode == 0 && b.user_data == 0, "the slot after a filled 80-byte payload is not zeroed");

        // Both slots must go through the kernel with their own user_data (i.e. the kernel agrees on the 128-byte stride).
        IoUring.PrepNop(ref a, 11);
        IoUring.PrepNop(ref b, 12);
        var cqes = SubmitAndCollect(ring, 2);
        Assert.True(cqes[0].UserData == 11 && cqes[1].UserData == 12, $"user_data {cqes[0].UserData},{cqes[1].UserData}, expected 11,12");
        AssertRes(0, cqes[0], "NOP");
        AssertRes(0, cqes[1], "NOP");
        // Wrap the ring a few times so every slot is reused.
        for (ulong i = 0; i < 10; i++) NopRoundTrip(ring, 100 + i);
    }

    [Fact]
    public void Setup_CqEntries_IsHonouredAndRoundedUp()
    {
        using (var ring = new IoUring(8, new IoUringOptions { CqEntries = 64 }))
        {
            Assert.True(ring.CqEntries == 64, $"CqEntries {ring.CqEntries}, expected 64");
            Assert.True(ring.SqEntries == 8, $"SqEntries {ring.SqEntries}, expected 8");
            Assert.True((ring.SetupFlags & IORING_SETUP_CQSIZE) != 0, $"SetupFlags 0x{ring.SetupFlags:x} lack CQSIZE");
            NopRoundTrip(ring, 5);
        }
        using (var ring = new IoUring(8, new IoUringOptions { CqEntries = 100 }))
            Assert.True(ring.CqEntries == 128, $"CqEntries {ring.CqEntries} for 100 asked, expected 128 (next power of two)");
    }

    [Fact]
    public void Setup_SingleIssuerDeferCoopTaskrun_AcceptedAndBoundToCreatingThread()
    {
        var opts = new IoUringOptions { SingleIssuer = true, DeferTaskrun = true, CoopTaskrun = true, FallbackOnEinval = false };
        using var ring = new IoUring(8, opts);
        uint want = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_COOP_TASKRUN;
        Assert.True((ring.SetupFlags & want) == want, $"SetupFlags 0x{ring.SetupFlags:x} lack 0x{want & ~ring.SetupFlags:x}");
        NopRoundTrip(ring, 7);

        // SINGLE_ISSUER: another thread may not submit (-EEXIST); the SQE stays queued for the owner.
        IoUring.PrepNop(ref Sqe(ring), 8);
        int otherRc = int.MinValue;
        var t = new Thread(() => otherRc = ring.Submit());
        t.Start();
        Assert.True(t.Join(5000), "Submit from a second thread did not return");
        Assert.True(otherRc == -17, $"Submit from a non-owner thread returned {otherRc} ({En(otherRc)}), expected -EEXIST");
        var cqes = SubmitAndCollect(ring, 1);
        Assert.True(cqes[0].UserData == 8, $"owner's submit reaped user_data {cqes[0].UserData}, expected 8");

        // The same flags with fallback on must be kept as they are on this kernel.
        opts.FallbackOnEinval = true;
        using var ring2 = new IoUring(8, opts);
        Assert.True((ring2.SetupFlags & want) == want, $"with fallback: SetupFlags 0x{ring2.SetupFlags:x} lack 0x{want & ~ring2.SetupFlags:x}");
    }

    // ---------------------------------------------------------------- 2. NOPs far past the ring size

    [Fact]
    public void Nop_100kRoundTripsThroughRingOf8_EachUserDataExactlyOnce()
    {
        const int total = 100_000;
        using var ring = new IoUring(8, IoUringOptions.Default);
        var rnd = new Random(42);
        var h = new SeenHandler { Seen = new bool[total + 1] };
        ulong next = 1;
        int submitted = 0;
        while (h.Count < total)
        {
            int batch = Math.Min(rnd.Next(1, 9), total - submitted);
            for (int i = 0; i < batch; i++)
            {
                ref io_uring_sqe sqe = ref ring.GetSqe();
                if (Unsafe.IsNullRef(ref sqe)) break;
                IoUring.PrepNop(ref sqe, next++);
                submitted++;
            }
            int rc = ring.SubmitAndWait(1, 2_000_000_000);
            Assert.True(rc >= 0, $"SubmitAndWait returned {rc} ({En(rc)}) after {h.Count} completions");
            ring.DrainCompletions(ref h);
            Assert.True(h.Duplicates == 0 && h.OutOfRange == 0 && h.BadRes == 0,
                $"after {h.Count} CQEs: {h.Duplicates} duplicates, {h.OutOfRange} unknown user_data, {h.BadRes} non-zero res (e.g. {h.FirstBad})");
        }
        Assert.True(h.Count == total, $"{h.Count} completions, expected {total}");
        int missing = Array.IndexOf(h.Seen, false, 1);
        Assert.True(missing < 0, $"user_data {missing} never completed");
        Assert.True(ring.OverflowEvents == 0 && ring.CqDropped == 0 && ring.SqDropped == 0,
            $"OverflowEvents {ring.OverflowEvents}, CqDropped {ring.CqDropped}, SqDropped {ring.SqDropped}");
        Assert.True(ring.CqReady == 0 && ring.SqPending == 0, $"left over: CqReady {ring.CqReady}, SqPending {ring.SqPending}");
    }

    // ---------------------------------------------------------------- 3. file I/O

    [Fact]
    public void File_WriteFsyncRead_AtSeveralOffsets()
    {
        const int fileSize = 256 * 1024;
        using var file = new TempFile(0);
        using var ring = new IoUring(16, IoUringOptions.Default);
        var rnd = new Random(7);
        (int Off, int Len)[] pieces = { (0, 4096), (4096, 512), (12345, 777), (65536 + 7, 20000), (200_000, 56_144) };
        var model = new byte[fileSize];
        using var wbuf = new NativeBuf(fileSize);
        using var rbuf = new NativeBuf(fileSize);
        rnd.NextBytes(wbuf.Span);

        for (int i = 0; i < pieces.Length; i++)
        {
            var (off, len) = pieces[i];
            ref io_uring_sqe sqe = ref Sqe(ring);
            IoUring.PrepWrite(ref sqe, file.Fd, wbuf.Addr(off), (uint)len, (ulong)off);
            sqe.user_data = (ulong)(i + 1);
            wbuf.Span.Slice(off, len).CopyTo(model.AsSpan(off));
        }
        var seen = new bool[pieces.Length];
        foreach (var c in SubmitAndCollect(ring, pieces.Length))
        {
            Assert.True(c.UserData >= 1 && c.UserData <= (ulong)pieces.Length && !seen[c.UserData - 1],
                $"write CQE with unexpected or repeated user_data {c.UserData}");
            seen[c.UserData - 1] = true;
            var (off, len) = pieces[(int)c.UserData - 1];
            AssertRes(len, c, $"write of {len} bytes at {off}");
        }

        ref io_uring_sqe fs = ref Sqe(ring);
        IoUring.PrepFsync(ref fs, file.Fd, 0);
        fs.user_data = 99;
        var fc = SubmitAndCollect(ring, 1);
        Assert.True(fc[0].UserData == 99, $"fsync user_data {fc[0].UserData}");
        AssertRes(0, fc[0], "fsync");

        // fsync flags reach the kernel: DATASYNC is accepted, an unknown flag is refused.
        ref io_uring_sqe fs2 = ref Sqe(ring);
        IoUring.PrepFsync(ref fs2, file.Fd, IORING_FSYNC_DATASYNC);
        fs2.user_data = 100;
        ref io_uring_sqe fs3 = ref Sqe(ring);
        IoUring.PrepFsync(ref fs3, file.Fd, 0x80);
        fs3.user_data = 101;
        var fc2 = SubmitAndCollect(ring, 2);
        fc2.Sort((x, y) => x.UserData.CompareTo(y.UserData));
        AssertRes(0, fc2[0], "fsync(DATASYNC)");
        AssertRes(-Errno.EINVAL, fc2[1], "fsync with unknown flag 0x80");

        long expectedSize = 200_000 + 56_144;
        Assert.True(file.Size == expectedSize, $"file size {file.Size}, expected {expectedSize}");

        for (int i = 0; i < pieces.Length; i++)
        {
            var (off, len) = pieces[i];
            ref io_uring_sqe sqe = ref Sqe(ring);
            IoUring.PrepRead(ref sqe, file.Fd, rbuf.Addr(off), (uint)len, (ulong)off);
            sqe.user_data = (ulong)(i + 1);
        }
        var rc = SubmitAndCollect(ring, pieces.Length);
        foreach (var c in rc)
        {
            Assert.True(c.UserData >= 1 && c.UserData <= (ulong)pieces.Length, $"read CQE with user_data {c.UserData}");
            var (off, len) = pieces[(int)c.UserData - 1];
            AssertRes(len, c, $"read of {len} bytes at {off}");
            AssertBytes(model.AsSpan(off, len), rbuf.Span.Slice(off, len), $"ring read of {len} bytes at {off}");
        }
        // Cross-check through plain pread: the ring's writes reached the file, gaps are zero.
        AssertBytes(model.AsSpan(0, (int)expectedSize), file.PRead(0, (int)expectedSize), "pread of the whole file");
    }

    [Fact]
    public void File_FixedBuffersAndFixedFile()
    {
        const int half = 32 * 1024;
        using var file = new TempFile(256 * 1024);
        using var ring = new IoUring(8, IoUringOptions.Default);
        using var buf = new NativeBuf(2 * half);
        // Two registered buffers: index 0 = first half, index 1 = second half.
        var iovs = new[]
        {
            new iovec { iov_base = (nint)buf.Ptr, iov_len = half },
            new iovec { iov_base = (nint)(buf.Ptr + half), iov_len = half },
        };
        ring.RegisterBuffers(iovs);
        ring.RegisterFiles(new[] { file.Fd });

        var rnd = new Random(11);
        var pattern = new byte[half];
        rnd.NextBytes(pattern);
        pattern.CopyTo(buf.Span);

        // WRITE_FIXED from buffer 0, through the raw fd.
        ref io_uring_sqe w = ref Sqe(ring);
        IoUring.PrepWriteFixed(ref w, file.Fd, buf.Addr(0), half, 8192, 0);
        w.user_data = 1;
        AssertRes(half, SubmitAndCollect(ring, 1)[0], "WRITE_FIXED from buffer 0");
        AssertBytes(pattern, file.PRead(8192, half), "pread after WRITE_FIXED");

        // READ_FIXED into buffer 1, through registered file index 0.
        ref io_uring_sqe r = ref Sqe(ring);
        IoUring.PrepReadFixed(ref r, 0, buf.Addr(half), half, 8192, 1);
        r.flags |= IOSQE_FIXED_FILE;
        r.user_data = 2;
        AssertRes(half, SubmitAndCollect(ring, 1)[0], "READ_FIXED into buffer 1 via fixed file 0");
        AssertBytes(pattern, buf.Span.Slice(half), "READ_FIXED data");

        // The same range named as buffer 0 lies outside it: refused, so buf_index really is passed.
        ref io_uring_sqe bad = ref Sqe(ring);
        IoUring.PrepReadFixed(ref bad, file.Fd, buf.Addr(half), 4096, 0, 0);
        bad.user_data = 3;
        AssertRes(-Errno.EFAULT, SubmitAndCollect(ring, 1)[0], "READ_FIXED of buffer 1's range with buf_index 0");

        // Plain WRITE through fixed file 0 at another offset, read back through the raw fd.
        var pattern2 = new byte[3000];
        rnd.NextBytes(pattern2);
        pattern2.CopyTo(buf.Span);
        ref io_uring_sqe w2 = ref Sqe(ring);
        IoUring.PrepWrite(ref w2, 0, buf.Addr(0), 3000, 100_001);
        w2.flags |= IOSQE_FIXED_FILE;
        w2.user_data = 4;
        AssertRes(3000, SubmitAndCollect(ring, 1)[0], "WRITE via fixed file 0");
        AssertBytes(pattern2, file.PRead(100_001, 3000), "pread after WRITE via fixed file");
    }

    [Fact]
    public void File_FallocatePunchHole_ReadsBackZerosAndKeepsSize()
    {
        const int size = 64 * 1024;
        using var file = new TempFile(0);
        using var ring = new IoUring(8, IoUringOptions.Default);
        using var buf = new NativeBuf(size);
        buf.Span.Fill(0x5A);
        ref io_uring_sqe w = ref Sqe(ring);
        IoUring.PrepWrite(ref w, file.Fd, buf.Addr(), size, 0);
        w.user_data = 1;
        AssertRes(size, SubmitAndCollect(ring, 1)[0], "write");

        ref io_uring_sqe f = ref Sqe(ring);
        IoUring.PrepFallocate(ref f, file.Fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192);
        f.user_data = 2;
        AssertRes(0, SubmitAndCollect(ring, 1)[0], "fallocate(PUNCH_HOLE|KEEP_SIZE, 4096, 8192)");
        Assert.True(file.Size == size, $"file size {file.Size} after punching a hole, expected {size}");

        buf.Span.Fill(0xEE);
        ref io_uring_sqe r = ref Sqe(ring);
        IoUring.PrepRead(ref r, file.Fd, buf.Addr(), size, 0);
        r.user_data = 3;
        AssertRes(size, SubmitAndCollect(ring, 1)[0], "read back");
        var expected = new byte[size];
        expected.AsSpan().Fill(0x5A);
        expected.AsSpan(4096, 8192).Clear();
        AssertBytes(expected, buf.Span, "file after punching [4096, 12288)");

        // Mode without KEEP_SIZE past EOF: plain allocation grows the file (mode and length are not swapped).
        ref io_uring_sqe g = ref Sqe(ring);
        IoUring.PrepFallocate(ref g, file.Fd, 0, size, 3 * 4096);
        g.user_data = 4;
        AssertRes(0, SubmitAndCollect(ring, 1)[0], "fallocate(0, 64K, 12K)");
        Assert.True(file.Size == size + 3 * 4096, $"file size {file.Size} after fallocate, expected {size + 3 * 4096}");
    }

    // ---------------------------------------------------------------- 4. full SQ

    [Fact]
    public void GetSqe_ReturnsNullWhenFull_AndSlotsFreeAfterSubmit()
    {
        using var ring = new IoUring(8, IoUringOptions.Default);
        for (int round = 0; round < 3; round++)
        {
            for (uint i = 0; i < ring.SqEntries; i++)
            {
                ref io_uring_sqe s = ref ring.GetSqe();
                Assert.False(Unsafe.IsNullRef(ref s), $"round {round}: GetSqe #{i} returned null with {ring.SqEntries} entries");
                Assert.True(s.opcode == 0 && s.user_data == 0 && s.fd == 0 && s.addr == 0 && s.len == 0,
                    $"round {round}: SQE #{i} not zeroed (opcode {s.opcode}, user_data {s.user_data}, fd {s.fd})");
                IoUring.PrepNop(ref s, (ulong)(round * 100 + i + 1));
                s.fd = -1234; // garbage that the next hand-out of this slot must clear
            }
            Assert.True(Unsafe.IsNullRef(ref ring.GetSqe()), $"round {round}: GetSqe did not return null with {ring.SqPending} pending");
            Assert.True(Unsafe.IsNullRef(ref ring.GetSqe()), $"round {round}: second GetSqe on a full SQ not null");
            Assert.True(ring.SqPending == ring.SqEntries && ring.SqSpace == 0, $"round {round}: SqPending {ring.SqPending}, SqSpace {ring.SqSpace}");

            int rc = ring.Submit();
            Assert.True(rc == (int)ring.SqEntries, $"round {round}: Submit returned {rc}, expected {ring.SqEntries}");
            Assert.True(ring.SqPending == 0 && ring.SqSpace == ring.SqEntries, $"round {round}: after Submit SqPending {ring.SqPending}, SqSpace {ring.SqSpace}");
            var cqes = SubmitAndCollect(ring, (int)ring.SqEntries);
            for (int i = 0; i < cqes.Count; i++)
                Assert.True(cqes[i].UserData == (ulong)(round * 100 + i + 1), $"round {round}: CQE {i} user_data {cqes[i].UserData}");
        }
        Assert.True(ring.Submit() == 0, "Submit with nothing pending did not return 0");
    }

    // ---------------------------------------------------------------- 5. cancellation

    [Fact]
    public void Cancel_ObservedByOwnerWhileCqeKeepComing()
    {
        IoUring? ring = null;
        Exception? error = null;
        long iterations = 0, completions = 0, cancelSeen = 0;
        using var started = new ManualResetEventSlim();
        var worker = new Thread(() =>
        {
            try
            {
                ring = new IoUring(8, new IoUringOptions
                {
                    Cancellable = true, SingleIssuer = true, DeferTaskrun = true, CoopTaskrun = true, FallbackOnEinval = false,
                });
                var h = new CollectHandler { Cqes = new(64) };
                ulong id = 1;
                while (!ring.IsCancelled)
                {
                    for (int i = 0; i < 4; i++)
                    {
                        ref io_uring_sqe s = ref ring.GetSqe();
                        if (Unsafe.IsNullRef(ref s)) break;
                        IoUring.PrepNop(ref s, id++);
                    }
                    int rc = ring.SubmitAndWait(1);
                    if (rc < 0 && rc != -Errno.EINTR) throw new SysException("SubmitAndWait", rc);
                    h.Cqes.Clear();
                    ring.DrainCompletions(ref h);
                    foreach (var c in h.Cqes) if (c.UserData == IoUring.CancelUserData) cancelSeen++;
                    completions += h.Cqes.Count;
                    if (++iterations == 100) started.Set();
                }
            }
            catch (Exception e) { error = e; started.Set(); }
        });
        worker.Start();
        try
        {
            Assert.True(started.Wait(5000), "worker did not complete 100 iterations in 5 s");
            Assert.True(error == null, "worker failed: " + error);
            Thread.Sleep(50);
            Assert.True(worker.IsAlive, $"worker stopped before Cancel (error: {error})");
            var sw = Stopwatch.StartNew();
            ring!.Cancel();
            bool joined = worker.Join(2000);
            Assert.True(joined, $"worker still running {sw.ElapsedMilliseconds} ms after Cancel ({Interlocked.Read(ref iterations)} iterations)");
            Assert.True(error == null, "worker failed: " + error);
            Assert.True(ring.IsCancelled, "IsCancelled false after Cancel");
            Assert.True(cancelSeen == 0, $"the cancel wake-up CQE reached the handler {cancelSeen} times");
            Assert.True(completions >= 400, $"only {completions} NOP completions in {iterations} iterations");
        }
        finally
        {
            if (worker.IsAlive) { ring?.Cancel(); worker.Join(5000); }
            ring?.Dispose();
        }
    }

    /// <summary>The owner blocks with nothing in flight; Cancel from another thread wakes it.</summary>
    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(true, true)]
    public void Cancel_WakesOwnerBlockedInWait(bool useSubmitAndWait, bool deferTaskrun)
    {
        IoUring? ring = null;
        Exception? error = null;
        int rc = int.MinValue;
        int drained = -1;
        using var ready = new ManualResetEventSlim();
        var worker = new Thread(() =>
        {
            try
            {
                ring = new IoUring(4, new IoUringOptions
                {
                    Cancellable = true, SingleIssuer = deferTaskrun, DeferTaskrun = deferTaskrun, CoopTaskrun = deferTaskrun,
                });
                ready.Set();
                if (useSubmitAndWait)
                {
                    rc = ring.SubmitAndWait(1);
                    var h = new CollectHandler { Cqes = new() };
                    drained = ring.DrainCompletions(ref h);
                }
                else
                {
                    rc = ring.WaitCqe(out _);
                }
            }
            catch (Exception e) { error = e; ready.Set(); }
        });
        worker.Start();
        try
        {
            Assert.True(ready.Wait(5000), "worker did not create its ring");
            Assert.True(error == null, "worker failed: " + error);
            Thread.Sleep(50);
            Assert.True(worker.IsAlive, $"owner returned before Cancel with rc {rc} ({En(rc)})");
            var sw = Stopwatch.StartNew();
            ring!.Cancel();
            Assert.True(worker.Join(2000), $"owner still blocked {sw.ElapsedMilliseconds} ms after Cancel");
            Assert.True(error == null, "worker failed: " + error);
            if (useSubmitAndWait)
            {
                // It submitted the armed eventfd read (1) and returned once that completed; the wake-up is not a completion.
                Assert.True(rc >= 0, $"SubmitAndWait returned {rc} ({En(rc)}) after Cancel");
                Assert.True(drained == 0, $"DrainCompletions handed out {drained} CQEs after Cancel, expected 0 (the wake-up is internal)");
                Assert.True(ring.IsCancelled, "IsCancelled false");
            }
            else
            {
                Assert.True(rc == -Errno.ECANCELED, $"WaitCqe returned {rc} ({En(rc)}), expected -ECANCELED");
            }
        }
        finally
        {
            if (worker.IsAlive) { ring?.Cancel(); worker.Join(5000); }
            ring?.Dispose();
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Cancel_BeforeWait_LaterWaitsReturnAtOnce(bool cancellable)
    {
        using var ring = new IoUring(4, new IoUringOptions { Cancellable = cancellable });
        ring.Cancel();
        Assert.True(ring.IsCancelled, "IsCancelled false after Cancel");
        var sw = Stopwatch.StartNew();
        int rc = ring.WaitCqe(out _);
        Assert.True(rc == -Errno.ECANCELED, $"WaitCqe after Cancel returned {rc} ({En(rc)}), expected -ECANCELED");
        // Let the eventfd read (if any) complete and be swallowed, so nothing at all is in flight.
        for (int i = 0; i < 3; i++)
        {
            rc = ring.SubmitAndWait(0);
            Assert.True(rc >= 0, $"SubmitAndWait(0) after Cancel returned {rc} ({En(rc)})");
            var h = new CollectHandler { Cqes = new() };
            int n = ring.DrainCompletions(ref h);
            Assert.True(n == 0, $"DrainCompletions handed out {n} CQEs (user_data {(n > 0 ? h.Cqes[0].UserData : 0)}) on an idle cancelled ring");
        }
        // Nothing in flight: a wait for 1 must still return at once (not run into the 2 s timeout).
        rc = ring.SubmitAndWait(1, 2_000_000_000);
        Assert.True(rc >= 0, $"SubmitAndWait(1) on an idle cancelled ring returned {rc} ({En(rc)}), expected to return at once");
        Assert.True(sw.ElapsedMilliseconds < 1000, $"calls after Cancel took {sw.ElapsedMilliseconds} ms");
    }

    /// <summary>
    /// Cancel racing Dispose never writes to a file that reused the closed eventfd's number: a thread cancels
    /// without pause while the owner disposes and at once opens a sentinel eventfd (it gets the lowest free number,
    /// which is usually the one just closed). Any 8 bytes the sentinel receives came from a stray Cancel.
    /// </summary>
    [Fact]
    public void Cancel_racing_Dispose_never_writes_to_a_reused_fd()
    {
        int reused = 0;
        for (int i = 0; i < 300; i++)
        {
            var ring = new IoUring(4, new IoUringOptions { Cancellable = true });
            using var go = new ManualResetEventSlim(false);
            bool stop = false;
            var canceller = new Thread(() =>
            {
                go.Set();
                while (!Volatile.Read(ref stop)) ring.Cancel();
            });
            canceller.Start();
            go.Wait();
            int before = ring.Fd;
            ring.Dispose();
            // Two sentinels take the two lowest free numbers: normally the ring's and its eventfd's, just closed.
            int s1 = Libc.EventFd(0, Libc.EFD_CLOEXEC | Libc.EFD_NONBLOCK);
            int s2 = Libc.EventFd(0, Libc.EFD_CLOEXEC | Libc.EFD_NONBLOCK);
            Assert.True(s1 >= 0 && s2 >= 0, $"eventfd failed: {En(Errno.Last)}");
            try
            {
                Thread.Sleep(1); // the canceller keeps calling Cancel on the disposed ring meanwhile
                Volatile.Write(ref stop, true);
                canceller.Join();
                if (s1 == before || s2 == before) reused++;
                foreach (int s in new[] { s1, s2 })
                {
                    ulong v = 0;
                    nint n = Libc.Read(s, &v, 8);
                    Assert.True(n < 0 && Errno.Last == Errno.EAGAIN, $"iteration {i}: the sentinel fd {s} received {v} from a Cancel after Dispose");
                }
            }
            finally { Libc.Close(s1); Libc.Close(s2); }
        }
        Assert.True(reused > 0, "the sentinel never reused a number the ring had closed: the test did not exercise the race");
    }

    /// <summary>
    /// On a DEFER_TASKRUN ring completions that arrive later (here an eventfd read woken by a write) are only
    /// posted inside io_uring_enter(GETEVENTS): Submit() with nothing to submit must still reap them.
    /// </summary>
    [Fact]
    public void Submit_OnDeferTaskrunRing_ReapsLateCompletions()
    {
        using var ring = new IoUring(4, new IoUringOptions { SingleIssuer = true, DeferTaskrun = true });
        int efd = Libc.EventFd(0, Libc.EFD_CLOEXEC);
        Assert.True(efd >= 0, $"eventfd failed: {En(Errno.Last)}");
        using var buf = new NativeBuf(4096);
        try
        {
            ref io_uring_sqe sqe = ref Sqe(ring);
            IoUring.PrepRead(ref sqe, efd, buf.Addr(), 8, 0);
            sqe.user_data = 77;
            int rc = ring.Submit();
            Assert.True(rc == 1, $"Submit returned {rc} ({En(rc)}), expected 1");
            Assert.True(Drain(ring).Count == 0, "eventfd read completed before the eventfd was written");

            ulong v = 5;
            Assert.True(Libc.Write(efd, &v, 8) == 8, $"eventfd write failed: {En(Errno.Last)}");
            var got = new List<(ulong UserData, int Res, uint Flags)>();
            var sw = Stopwatch.StartNew();
            while (got.Count == 0 && sw.ElapsedMilliseconds < 2000)
            {
                rc = ring.Submit();
                Assert.True(rc >= 0, $"Submit returned {rc} ({En(rc)})");
                got.AddRange(Drain(ring));
                if (got.Count == 0) Thread.Sleep(1);
            }
            Assert.True(got.Count == 1, $"Submit()+DrainCompletions reaped {got.Count} CQEs in {sw.ElapsedMilliseconds} ms, expected the eventfd read");
            Assert.True(got[0].UserData == 77, $"user_data {got[0].UserData}, expected 77");
            AssertRes(8, got[0], "eventfd read");
            Assert.True(*(ulong*)buf.Ptr == 5, $"eventfd read gave {*(ulong*)buf.Ptr}, expected 5");
        }
        finally { Libc.Close(efd); }
    }

    // ---------------------------------------------------------------- 6. CQ overflow

    [Fact]
    public void Overflow_DetectedAndNothingLost()
    {
        const int total = 64;
        using var ring = new IoUring(4, new IoUringOptions { CqEntries = 8 });
        Assert.True(ring.SqEntries == 4 && ring.CqEntries == 8, $"SqEntries {ring.SqEntries}, CqEntries {ring.CqEntries}, expected 4/8");
        Assert.True((ring.Features & IORING_FEAT_NODROP) != 0, $"kernel lacks IORING_FEAT_NODROP (features 0x{ring.Features:x})");

        ulong id = 1;
        while (id <= total)
        {
            for (int i = 0; i < 4; i++) IoUring.PrepNop(ref Sqe(ring), id++);
            int rc = ring.Submit();
            Assert.True(rc == 4, $"Submit with an overflowing CQ returned {rc} ({En(rc)}) at user_data {id - 4}, expected 4");
        }
        Assert.True(ring.Submit() >= 0, "final Submit failed");
        Assert.True(ring.OverflowEvents > 0, $"OverflowEvents {ring.OverflowEvents} after {total} unreaped NOPs into a CQ of 8");
        Assert.True(ring.CqReady == ring.CqEntries, $"CqReady {ring.CqReady}, expected a full CQ ({ring.CqEntries})");

        var h = new CollectHandler { Cqes = new() };
        for (int spins = 0; h.Cqes.Count < total && spins < 1000; spins++)
        {
            ring.DrainCompletions(ref h);
            int rc = ring.SubmitAndWait(0); // GETEVENTS: the kernel flushes parked CQEs into the freed slots
            Assert.True(rc >= 0, $"SubmitAndWait(0) returned {rc} ({En(rc)})");
        }
        ring.DrainCompletions(ref h);
        Assert.True(h.Cqes.Count == total, $"{h.Cqes.Count} completions reaped, expected {total}");
        for (int i = 0; i < total; i++)
        {
            Assert.True(h.Cqes[i].UserData == (ulong)(i + 1), $"CQE {i} has user_data {h.Cqes[i].UserData}, expected {i + 1} (order lost through overflow)");
            AssertRes(0, h.Cqes[i], "NOP");
        }
        Assert.True(ring.CqDropped == 0, $"CqDropped {ring.CqDropped}");
        Assert.True(ring.SqDropped == 0, $"SqDropped {ring.SqDropped}");

        // The overflow condition is gone: further submits do not count new events.
        long events = ring.OverflowEvents;
        NopRoundTrip(ring, 1000);
        ring.Submit();
        Assert.True(ring.OverflowEvents == events, $"OverflowEvents went from {events} to {ring.OverflowEvents} after the CQ was drained");
    }

    // ---------------------------------------------------------------- 7. randomized run against a model

    private enum OpKind { Nop, Write, Read, Fsync }

    private struct Op
    {
        public OpKind Kind;
        public int Off, Len, Slot;
        public byte[]? Expected;
    }

    [Fact]
    public void Randomized_MixAgainstModel()
    {
        int timeSeed = Environment.TickCount;
        foreach (int seed in new[] { 1, 2, 3, timeSeed })
            RunRandomized(seed, 1500);
    }

    private static void RunRandomized(int seed, int opCount)
    {
        const int fileSize = 256 * 1024;
        const int maxLen = 16 * 1024;
        const int slots = 32;
        string tag = $"seed {seed}";
        var rnd = new Random(seed);
        var model = new byte[fileSize];
        using var file = new TempFile(fileSize);
        using var ring = new IoUring(16, IoUringOptions.Default);
        using var arena = new NativeBuf(slots * maxLen);
        var freeSlots = new Stack<int>();
        for (int i = slots - 1; i >= 0; i--) freeSlots.Push(i);
        var inflight = new Dictionary<ulong, Op>();
        ulong nextId = 1;
        int reads = 0, writes = 0;

        void Complete(List<(ulong UserData, int Res, uint Flags)> cqes)
        {
            foreach (var c in cqes)
            {
                Assert.True(inflight.Remove(c.UserData, out Op op), $"{tag}: CQE for unknown or already completed user_data {c.UserData}");
                switch (op.Kind)
                {
                    case OpKind.Nop: AssertRes(0, c, $"{tag}: NOP"); break;
                    case OpKind.Fsync: AssertRes(0, c, $"{tag}: fsync"); break;
                    case OpKind.Write: AssertRes(op.Len, c, $"{tag}: write of {op.Len} at {op.Off}"); break;
                    case OpKind.Read:
                        AssertRes(op.Len, c, $"{tag}: read of {op.Len} at {op.Off}");
                        AssertBytes(op.Expected, new ReadOnlySpan<byte>(arena.Ptr + op.Slot * maxLen, op.Len),
                            $"{tag}: read of {op.Len} at {op.Off} (user_data {c.UserData})");
                        break;
                }
                if (op.Slot >= 0) freeSlots.Push(op.Slot);
            }
        }

        void Reap() => Complete(Drain(ring));

        void WaitSome(uint n)
        {
            int rc = ring.SubmitAndWait(n, 5_000_000_000);
            Assert.True(rc >= 0 || rc == -Errno.EINTR, $"{tag}: SubmitAndWait({n}) returned {rc} ({En(rc)}) with {inflight.Count} in flight");
            Reap();
        }

        void WaitAll()
        {
            var sw = Stopwatch.StartNew();
            while (inflight.Count > 0)
            {
                WaitSome(1);
                Assert.True(sw.ElapsedMilliseconds < 5000, $"{tag}: {inflight.Count} ops still in flight after 5 s");
            }
        }

        bool Overlaps(int off, int len, bool writesOnly)
        {
            foreach (var op in inflight.Values)
            {
                if (op.Kind == OpKind.Write || (!writesOnly && op.Kind == OpKind.Read))
                    if (off < op.Off + op.Len && op.Off < off + len) return true;
            }
            return false;
        }

        for (int n = 0; n < opCount; n++)
        {
            var kind = rnd.Next(0, 10) switch { 0 => OpKind.Nop, 1 => OpKind.Fsync, <= 5 => OpKind.Write, _ => OpKind.Read };
            var op = new Op { Kind = kind, Slot = -1 };
            if (kind is OpKind.Write or OpKind.Read)
            {
                bool aligned = rnd.Next(2) == 0;
                op.Len = aligned ? 512 * rnd.Next(1, maxLen / 512 + 1) : rnd.Next(1, maxLen + 1);
                op.Off = aligned ? 512 * rnd.Next(0, (fileSize - op.Len) / 512 + 1) : rnd.Next(0, fileSize - op.Len + 1);
                // A write may not overlap any in-flight read or write; a read may not overlap an in-flight write.
                if (Overlaps(op.Off, op.Len, writesOnly: kind == OpKind.Read)) WaitAll();
                if (freeSlots.Count == 0) WaitSome(1);
                while (freeSlots.Count == 0) WaitSome(1);
                op.Slot = freeSlots.Pop();
            }
            // Keep the in-flight count within the CQ so nothing overflows.
            while (inflight.Count >= ring.CqEntries) WaitSome(1);

            ref io_uring_sqe sqe = ref ring.GetSqe();
            if (Unsafe.IsNullRef(ref sqe))
            {
                int src = ring.Submit();
                Assert.True(src > 0, $"{tag}: Submit on a full SQ returned {src} ({En(src)})");
                Reap();
                sqe = ref Sqe(ring);
            }
            ulong id = nextId++;
            byte* buf = op.Slot >= 0 ? arena.Ptr + op.Slot * maxLen : null;
            switch (kind)
            {
                case OpKind.Nop:
                    IoUring.PrepNop(ref sqe, id);
                    break;
                case OpKind.Fsync:
                    IoUring.PrepFsync(ref sqe, file.Fd, rnd.Next(2) == 0 ? 0 : IORING_FSYNC_DATASYNC);
                    break;
                case OpKind.Write:
                    var data = new Span<byte>(buf, op.Len);
                    rnd.NextBytes(data);
                    data.CopyTo(model.AsSpan(op.Off));
                    IoUring.PrepWrite(ref sqe, file.Fd, (ulong)buf, (uint)op.Len, (ulong)op.Off);
                    writes++;
                    break;
                case OpKind.Read:
                    new Span<byte>(buf, op.Len).Fill(0xCC);
                    op.Expected = model.AsSpan(op.Off, op.Len).ToArray();
                    IoUring.PrepRead(ref sqe, file.Fd, (ulong)buf, (uint)op.Len, (ulong)op.Off);
                    reads++;
                    break;
            }
            sqe.user_data = id;
            inflight.Add(id, op);

            switch (rnd.Next(0, 8))
            {
                case 0:
                    int src = ring.Submit();
                    Assert.True(src >= 0, $"{tag}: Submit returned {src} ({En(src)})");
                    Reap();
                    break;
                case 1:
                    WaitSome((uint)rnd.Next(1, inflight.Count + 1));
                    break;
                case 2:
                    Reap();
                    break;
                default:
                    break; // keep batching
            }
        }
        WaitAll();
        Assert.True(freeSlots.Count == slots, $"{tag}: {slots - freeSlots.Count} buffer slots never released");
        Assert.True(reads > 100 && writes > 100, $"{tag}: only {reads} reads and {writes} writes issued");
        AssertBytes(model, file.PRead(0, fileSize), $"{tag}: whole file vs model after {opCount} ops");
        Assert.True(ring.CqDropped == 0 && ring.SqDropped == 0 && ring.OverflowEvents == 0,
            $"{tag}: CqDropped {ring.CqDropped}, SqDropped {ring.SqDropped}, OverflowEvents {ring.OverflowEvents}");
    }

    // ---------------------------------------------------------------- 8. zero allocation

    private static CountHandler RunNops(IoUring ring, int total)
    {
        var h = new CountHandler();
        ulong id = 1;
        long submitted = 0;
        while (h.Count < total)
        {
            while (submitted < total)
            {
                ref io_uring_sqe sqe = ref ring.GetSqe();
                if (Unsafe.IsNullRef(ref sqe)) break;
                IoUring.PrepNop(ref sqe, id++);
                submitted++;
            }
            int rc = ring.SubmitAndWait(1, 2_000_000_000);
            if (rc < 0 && rc != -Errno.EINTR) { h.BadRes += 1_000_000; return h; } // e.g. -ETIME: CQEs went missing
            ring.DrainCompletions(ref h);
        }
        return h;
    }

    [Fact]
    public void NoManagedAllocation_PerSubmittedAndCompletedEntry()
    {
        const int total = 100_000;
        using var ring = new IoUring(32, IoUringOptions.Default);
        // Warm up: JIT every path (including tier-up) before measuring.
        for (int i = 0; i < 5; i++) RunNops(ring, 2000);

        long before = GC.GetAllocatedBytesForCurrentThread();
        CountHandler h = RunNops(ring, total);
        long after = GC.GetAllocatedBytesForCurrentThread();

        Assert.True(h.Count == total && h.BadRes == 0, $"{h.Count} completions ({h.BadRes} bad), expected {total}");
        Assert.True(after - before == 0, $"{after - before} bytes allocated on the managed heap over {total} NOP submit/complete cycles");
    }

    // ---------------------------------------------------------------- 9. timeout

    [Fact]
    public void SubmitAndWait_Timeout_ReturnsETime()
    {
        foreach (bool defer in new[] { false, true })
        {
            using var ring = new IoUring(4, new IoUringOptions { SingleIssuer = defer, DeferTaskrun = defer });
            var sw = Stopwatch.StartNew();
            int rc = ring.SubmitAndWait(1, 20_000_000);
            long ms = sw.ElapsedMilliseconds;
            Assert.True(rc == -Errno.ETIME, $"defer={defer}: SubmitAndWait(1, 20 ms) on an idle ring returned {rc} ({En(rc)}), expected -ETIME (-62)");
            Assert.True(ms >= 15 && ms < 2000, $"defer={defer}: timeout of 20 ms took {ms} ms");

            sw.Restart();
            rc = ring.WaitCqe(out _, 10_000_000);
            ms = sw.ElapsedMilliseconds;
            Assert.True(rc == -Errno.ETIME, $"defer={defer}: WaitCqe(10 ms) returned {rc} ({En(rc)}), expected -ETIME");
            Assert.True(ms >= 5 && ms < 2000, $"defer={defer}: WaitCqe timeout of 10 ms took {ms} ms");

            // With a completion available the same call returns at once.
            IoUring.PrepNop(ref Sqe(ring), 3);
            sw.Restart();
            rc = ring.SubmitAndWait(1, 1_000_000_000);
            Assert.True(rc == 1, $"defer={defer}: SubmitAndWait with a NOP returned {rc} ({En(rc)}), expected 1");
            Assert.True(sw.ElapsedMilliseconds < 500, $"defer={defer}: took {sw.ElapsedMilliseconds} ms with a completion ready");
            Assert.True(ring.WaitCqe(out var cqe, 1_000_000_000) == 0 && cqe.user_data == 3, $"defer={defer}: WaitCqe gave user_data {cqe.user_data}");
        }
    }

    /// <summary>
    /// WaitCqe's timeout bounds the whole call even when it also has SQEs to submit (here the armed eventfd read of a
    /// Cancellable ring): the kernel reports the submitted count rather than -ETIME for such an io_uring_enter.
    /// </summary>
    [Fact]
    public void WaitCqe_Timeout_HonouredWhenSqesArePending()
    {
        foreach (bool defer in new[] { false, true })
        {
            using var ring = new IoUring(4, new IoUringOptions { Cancellable = true, SingleIssuer = defer, DeferTaskrun = defer });
            Assert.True(ring.SqPending == 1, $"defer={defer}: a Cancellable ring starts with {ring.SqPending} pending SQEs, expected 1 (the eventfd read)");
            var sw = Stopwatch.StartNew();
            int rc = ring.WaitCqe(out _, 300_000_000);
            long ms = sw.ElapsedMilliseconds;
            Assert.True(rc == -Errno.ETIME, $"defer={defer}: WaitCqe(300 ms) returned {rc} ({En(rc)}), expected -ETIME");
            // A second full wait (the bug this guards against) would take >= 600 ms; the margin absorbs a loaded host.
            Assert.True(ms >= 290 && ms < 550, $"defer={defer}: WaitCqe(300 ms) with a pending SQE took {ms} ms");
            Assert.True(ring.SqPending == 0, $"defer={defer}: {ring.SqPending} SQEs still pending after WaitCqe");
        }
    }

    /// <summary>The queue's idle tick: a relative IORING_OP_TIMEOUT completes alone with -ETIME after its time, re-armable.</summary>
    [Fact]
    public void TimeoutOp_CompletesWithETimeAfterItsTime_AndCanBeRearmed()
    {
        foreach (bool defer in new[] { false, true })
        {
            using var ring = new IoUring(4, new IoUringOptions { SingleIssuer = defer, DeferTaskrun = defer });
            var ts = (__kernel_timespec*)NativeMemory.Alloc((nuint)sizeof(__kernel_timespec));
            try
            {
                ts->tv_sec = 0;
                ts->tv_nsec = 30_000_000;
                for (int i = 0; i < 3; i++)
                {
                    ref io_uring_sqe sqe = ref Sqe(ring);
                    IoUring.PrepTimeout(ref sqe, ts, 0, 0);
                    sqe.user_data = 77 + (ulong)i;
                    var sw = Stopwatch.StartNew();
                    int rc = ring.WaitCqe(out var cqe, 5_000_000_000);
                    long ms = sw.ElapsedMilliseconds;
                    Assert.True(rc == 0, $"defer={defer} tick {i}: WaitCqe returned {rc} ({En(rc)})");
                    Assert.True(cqe.user_data == 77 + (ulong)i && cqe.res == -Errno.ETIME,
                        $"defer={defer} tick {i}: CQE user_data {cqe.user_data} res {cqe.res} ({En(cqe.res)}), expected {77 + i} and -ETIME");
                    Assert.True(ms >= 25 && ms < 2000, $"defer={defer} tick {i}: a 30 ms timeout completed after {ms} ms");
                }
            }
            finally { NativeMemory.Free(ts); }
        }
    }
}
