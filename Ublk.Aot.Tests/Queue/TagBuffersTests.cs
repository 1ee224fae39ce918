using System;
using System.IO;
using Ublk.Aot.Ring;
using Ublk.Aot.Ublk;
using Xunit;

namespace Ublk.Aot.Tests.Queue;

/// <summary>The copy mode's buffer strategy through its public surface, with and without a ring.</summary>
public sealed class TagBuffersTests
{
    private static readonly QueueGeometry G = new(0, 0, Depth: 8, MaxIoBytes: 64 * 1024);

    [Fact]
    public void Each_tag_has_its_own_page_aligned_buffer_and_commands_carry_its_address()
    {
        using var b = new TagBuffers(new BufferOptions(TimeSpan.FromSeconds(20), Fixed: false, Huge: false));
        b.SetUp(G, ring: null);
        Assert.Equal((nuint)(8 * 64 * 1024), b.Size);
        for (ushort t = 0; t < G.Depth; t++)
        {
            Assert.Equal(0UL, b.Address(t) % 4096);
            Assert.Equal(b.Address(t), b.CommandAddress(t));
            if (t > 0) Assert.Equal(G.MaxIoBytes, b.Address(t) - b.Address((ushort)(t - 1)));
            b.Span(t, (int)G.MaxIoBytes).Fill((byte)(t + 1));
        }
        for (ushort t = 0; t < G.Depth; t++)
            Assert.True(b.Span(t, (int)G.MaxIoBytes).IndexOfAnyExcept((byte)(t + 1)) < 0, "tag " + t + " was overwritten by a neighbour");
    }

    [Fact]
    public void Idle_release_gives_the_pages_back_and_they_read_as_zeros()
    {
        using var b = new TagBuffers(new BufferOptions(TimeSpan.FromSeconds(5), Fixed: false, Huge: false));
        b.SetUp(G, ring: null);
        Assert.Equal(TimeSpan.FromSeconds(5), b.IdleRelease);
        b.Span(3, 4096).Fill(0x5A);
        Assert.True(b.ReleaseIdle());
        Assert.True(b.Span(3, 4096).IndexOfAnyExcept((byte)0) < 0);
    }

    [Fact]
    public void Huge_buffers_start_on_a_2_MiB_boundary_and_round_up()
    {
        using var b = new TagBuffers(new BufferOptions(TimeSpan.Zero, Fixed: false, Huge: true));
        b.SetUp(G, ring: null);
        Assert.Equal(0UL, b.Address(0) % (2 * 1024 * 1024));
        Assert.Equal((nuint)(2 * 1024 * 1024), b.Size);
        b.Span((ushort)(G.Depth - 1), (int)G.MaxIoBytes).Fill(1);
    }

    [Fact]
    public void Registered_buffers_serve_fixed_io_and_are_never_released()
    {
        using var ring = new IoUring(8, IoUringOptions.Default);
        using var b = new TagBuffers(new BufferOptions(TimeSpan.FromSeconds(20), Fixed: true, Huge: false));
        b.SetUp(G, ring);
        Assert.True(b.Registered);
        Assert.Equal(TimeSpan.Zero, b.IdleRelease);
        Assert.False(b.ReleaseIdle());

        // A WRITE_FIXED from tag 5's buffer, at its registered index, lands in a file.
        string path = Path.GetTempFileName();
        try
        {
            int fd = global::Ublk.Aot.Interop.Libc.Open(path, global::Ublk.Aot.Interop.Libc.O_RDWR, 0);
            Assert.True(fd >= 0);
            try
            {
                b.Span(5, 4096).Fill(0xC3);
                ref var sqe = ref ring.GetSqe();
                IoUring.PrepWriteFixed(ref sqe, fd, b.Address(5), 4096, 0, b.RegisteredIndex(5));
                Assert.Equal(0, ring.WaitCqe(out var cqe));
                Assert.Equal(4096, cqe.res);
            }
            finally { global::Ublk.Aot.Interop.Libc.Close(fd); }
            byte[] got = File.ReadAllBytes(path);
            Assert.Equal(4096, got.Length);
            Assert.True(Array.TrueForAll(got, x => x == 0xC3));
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void Fixed_buffers_without_a_ring_are_refused_and_teardown_is_idempotent()
    {
        var b = new TagBuffers(new BufferOptions(TimeSpan.Zero, Fixed: true, Huge: false));
        Assert.Throws<InvalidOperationException>(() => b.SetUp(G, ring: null));
        b.Dispose();
        b.Dispose();
    }
}
