using System;
using Ublk.Aot.Abi;
using Ublk.Aot.Interop;
using Ublk.Aot.Ring;

namespace Ublk.Aot.Ublk;

/// <summary>
/// The copy mode's buffers: one page-aligned buffer of max-io bytes per tag, in one anonymous MAP_NORESERVE mapping
/// (untouched pages cost nothing). The kernel copies a WRITE's data into the tag's buffer before the request reaches
/// the server, and a READ's data out of it at COMMIT. Optionally 2 MiB aligned for transparent huge pages, and
/// optionally registered with the queue's io_uring (READ_FIXED/WRITE_FIXED on them, buffer index = tag).
/// In user-copy mode the same buffers are the backend's bounce buffers: the kernel does not know them
/// (<paramref name="carriesAddress"/> false: FETCH/COMMIT carry addr 0, as USER_COPY requires).
/// </summary>
public sealed unsafe class TagBuffers(BufferOptions options, bool carriesAddress = true) : BufferStrategy
{
    private const nuint HugePage = 2 * 1024 * 1024;

    private byte* _base;
    private nuint _size;
    private uint _stride;

    public BufferOptions Options { get; } = options;
    /// <summary>Registered with the queue's ring: tag t's buffer is fixed buffer <see cref="RegisteredIndex"/>(t).</summary>
    public bool Registered { get; private set; }
    /// <summary>Bytes mapped (depth x max-io, rounded up to 2 MiB with huge buffers).</summary>
    public nuint Size => _size;

    public override void SetUp(in QueueGeometry g, IoUring? ring)
    {
        if (_base != null) throw new InvalidOperationException("TagBuffers.SetUp called twice");
        _stride = g.MaxIoBytes;
        _size = (nuint)g.Depth * g.MaxIoBytes;
        // Huge buffers: over-map by 2 MiB, keep the 2 MiB-aligned part (whole huge pages), give the rest back.
        if (Options.Huge) _size = (_size + HugePage - 1) / HugePage * HugePage;
        nuint mapSize = Options.Huge ? _size + HugePage : _size;
        nint b = Libc.Mmap(0, mapSize, Libc.PROT_READ | Libc.PROT_WRITE,
            Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | Libc.MAP_NORESERVE, -1, 0);
        if (b == Libc.MAP_FAILED) throw new SysException("mmap(queue " + g.QueueId + " buffers)", Errno.Last);
        if (Options.Huge)
        {
            nint start = (nint)(((nuint)b + HugePage - 1) / HugePage * HugePage);
            if (start > b) Libc.Munmap(b, (nuint)(start - b));
            nint end = start + (nint)_size, mapEnd = b + (nint)mapSize;
            if (mapEnd > end) Libc.Munmap(end, (nuint)(mapEnd - end));
            b = start;
            Libc.Madvise(b, _size, Libc.MADV_HUGEPAGE); // best effort: THP may be off ("never")
        }
        _base = (byte*)b;
        if (Options.Fixed)
        {
            if (ring == null) throw new InvalidOperationException("fixed buffers need the queue's ring");
            // Registration pins (and so faults in) every page: depth x max-io bytes of RAM from here on.
            var iovs = new iovec[g.Depth];
            for (int t = 0; t < g.Depth; t++) { iovs[t].iov_base = (nint)Address((ushort)t); iovs[t].iov_len = g.MaxIoBytes; }
            ring.RegisterBuffers(iovs);
            Registered = true;
        }
    }

    /// <summary>Address of the tag's buffer (page aligned, max-io bytes long), for SQEs.</summary>
    public ulong Address(ushort tag) => (ulong)(_base + (nuint)tag * _stride);

    /// <summary>The first <paramref name="length"/> bytes of the tag's buffer.</summary>
    public Span<byte> Span(ushort tag, int length) => new(_base + (nuint)tag * _stride, length);

    /// <summary>The fixed-buffer index of the tag's buffer (when <see cref="Registered"/>).</summary>
    public ushort RegisteredIndex(ushort tag) => tag;

    public override ulong CommandAddress(ushort tag) => carriesAddress ? Address(tag) : 0;

    /// <summary>
    /// Never with registered buffers: MADV_DONTNEED would swap fresh pages in under the mapping while the ring keeps
    /// using the old pinned ones, and a backend's fixed I/O would miss the data the kernel copied.
    /// </summary>
    public override TimeSpan IdleRelease => Options.Fixed ? TimeSpan.Zero : Options.IdleRelease;

    /// <summary>
    /// Gives the pages of every tag buffer back to the kernel; they read as zeros and fault in again on use. Safe
    /// only while no request is being served: the kernel copies into and out of these buffers in the queue thread's
    /// own io_uring_enter (task work and command issue), so between two enters, with nothing at the backend, no one
    /// else touches them. The queue calls it only then.
    /// </summary>
    public override bool ReleaseIdle()
    {
        if (Registered || _base == null) return false;
        Libc.Madvise((nint)_base, _size, Libc.MADV_DONTNEED);
        return true;
    }

    public override void Dispose()
    {
        if (_base != null) { Libc.Munmap((nint)_base, _size); _base = null; }
        Registered = false;
    }
}
