using System;
using System.IO;
using Ublk.Aot.Abi;
using Ublk.Aot.Interop;
using Ublk.Aot.Ring;
using Ublk.Aot.Ublk;
using static Ublk.Aot.Abi.IoUringConst;
using static Ublk.Aot.Abi.UblkConst;

namespace Ublk.Aot.Backends;

/// <summary>
/// qcow2:PATH[,l2-cache=SIZE] — a qcow2 image (docs/qcow2-design.md). One queue owns the image's metadata (the
/// L1 table, the L2 cache, refcounts), so nothing is locked. A READ maps its range through the L2 cache: the
/// allocated pieces become READ SQEs on the queue's io_uring (contiguous host ranges merged, up to
/// <see cref="MaxPieces"/> per request), zero pieces are cleared, and what lives in the backing chain or a
/// compressed cluster is read synchronously. A WRITE whose every cluster the image already owns becomes WRITE SQEs
/// (FUA: RWF_DSYNC); one that must allocate (a new cluster, copy-on-write, a zero-flagged cluster) is done
/// synchronously by <see cref="Qcow2Image.Write"/> in its crash-safe order, its L2 entry written back later, except
/// where the new cluster lies past the end of the file over what reads as zeros: there the cluster is allocated
/// first (<see cref="Qcow2Image.TryAllocateForWrite"/>) and the data goes as a WRITE SQE like any other. FLUSH
/// is that write-back (<see cref="Qcow2Image.WriteBack"/>) when metadata changed since the last one, else an
/// fdatasync SQE; DISCARD and WRITE_ZEROES change L2 entries synchronously.
/// </summary>
public struct Qcow2Backend(Qcow2Image image) : IBackend
{
    /// <summary>Host pieces one request may have in flight; a request that maps to more is served synchronously.</summary>
    public const int MaxPieces = 32;

    private static readonly int ImageSlot = UblkQueue.FileIndex(0);
    private const byte SubFsync = 255; // sub-ops 0..MaxPieces-1 are a request's pieces

    private readonly Qcow2Image _image = image;
    private IoState[] _io = [];
    private Piece[] _pieces = [];

    private struct IoState
    {
        public uint Length;
        public int Pending; // pieces in flight
        public int Error;   // the first piece's error, or 0
        public bool Write, Fua;
    }

    private struct Piece
    {
        public ulong Host;
        public uint BufferOffset, Length, Done;
    }

    public static int[] Files(Qcow2Image image) => [image.Fd];

    public void Attach(UblkQueue queue)
    {
        _io = new IoState[queue.Depth];
        _pieces = new Piece[queue.Depth * MaxPieces];
    }

    public int Submit(UblkQueue queue, ushort tag, in ublksrv_io_desc iod)
    {
        ulong offset = iod.start_sector << 9;
        uint length = iod.nr_sectors << 9;
        ulong size = _image.Header.Size;
        byte op = iod.Op;
        if (op != UBLK_IO_OP_FLUSH && (offset > size || length > size - offset)) return -Errno.EINVAL;
        try
        {
            switch (op)
            {
                case UBLK_IO_OP_READ: return SubmitRead(queue, tag, offset, length);
                case UBLK_IO_OP_WRITE: return SubmitWrite(queue, tag, offset, length, (iod.op_flags & UBLK_IO_F_FUA) != 0);
                case UBLK_IO_OP_FLUSH:
                {
                    // Metadata changed since the last FLUSH: its ordered write-back (two fdatasyncs) right here.
                    if (_image.HasUnwrittenMetadata)
                    {
                        _image.WriteBack();
                        return 0;
                    }
                    ref io_uring_sqe sqe = ref queue.GetTargetSqe(tag, SubFsync);
                    IoUring.PrepFsync(ref sqe, ImageSlot, IORING_FSYNC_DATASYNC);
                    sqe.flags = IOSQE_FIXED_FILE;
                    return Backend.Pending;
                }
                case UBLK_IO_OP_DISCARD:
                    _image.Zero(offset, length, discard: true, keepAllocated: false, fua: false);
                    return 0;
                case UBLK_IO_OP_WRITE_ZEROES:
                    _image.Zero(offset, length, discard: false, keepAllocated: (iod.op_flags & UBLK_IO_F_NOUNMAP) != 0,
                        fua: (iod.op_flags & UBLK_IO_F_FUA) != 0);
                    return 0;
                default:
                    return -Errno.EOPNOTSUPP;
            }
        }
        catch (Exception e) when (e is Qcow2Exception or IOException)
        {
            return Failed(e);
        }
    }

    /// <summary>A synchronous part failed: one line on stderr (the image's trouble is the operator's to see), -errno to the request.</summary>
    private static int Failed(Exception e)
    {
        Console.Error.WriteLine("ublk-aot: " + e.Message);
        return e is Qcow2Exception q && q.Errno != 0 ? -q.Errno : -Errno.EIO;
    }

    private int SubmitRead(UblkQueue queue, ushort tag, ulong offset, uint length)
    {
        Span<byte> buffer = queue.Buffers!.Span(tag, (int)length);
        int first = tag * MaxPieces, n = 0;
        uint pos = 0;
        while (pos < length)
        {
            Qcow2Mapping m = _image.Map(offset + pos);
            uint k = Math.Min(m.Length, length - pos);
            switch (m.Kind)
            {
                case Qcow2Kind.Data:
                    if (!AddPiece(first, ref n, m.Host, pos, k))
                    {
                        // More pieces than a request may have in flight: the rest synchronously.
                        _image.Read(offset + pos, buffer[(int)pos..]);
                        pos = length;
                        continue;
                    }
                    break;
                case Qcow2Kind.Zero:
                    buffer.Slice((int)pos, (int)k).Clear();
                    break;
                default: // the backing chain, or a compressed cluster
                    _image.Read(offset + pos, buffer.Slice((int)pos, (int)k));
                    break;
            }
            pos += k;
        }
        return Issue(queue, tag, n, length, write: false, fua: false);
    }

    private int SubmitWrite(UblkQueue queue, ushort tag, ulong offset, uint length, bool fua)
    {
        // A FUA write is durable only with the entries that point at its clusters: those may still be in memory.
        if (fua && _image.HasUnwrittenMetadata) return WriteSync(queue, tag, offset, length, fua);
        int first = tag * MaxPieces, n = 0;
        uint pos = 0;
        bool allocated = false;
        while (pos < length)
        {
            Qcow2Mapping m = _image.Map(offset + pos);
            if (!m.InPlace)
            {
                // A new cluster over zeros at the end of the file takes the data as an SQE too (the image says when);
                // a FUA write would make its new entry durable: the synchronous path does that.
                if (fua || allocated || !_image.TryAllocateForWrite(offset + pos)) return WriteSync(queue, tag, offset, length, fua);
                allocated = true; // mapped again: in place now
                continue;
            }
            allocated = false;
            uint k = Math.Min(m.Length, length - pos);
            if (!AddPiece(first, ref n, m.Host, pos, k)) return WriteSync(queue, tag, offset, length, fua);
            pos += k;
        }
        return Issue(queue, tag, n, length, write: true, fua);
    }

    /// <summary>
    /// Adds [pos, pos+k) of the request's buffer at host offset <paramref name="host"/> to its pieces: merged into the
    /// last piece where both the host range and the buffer range continue it, else a new piece; false when the
    /// request already has <see cref="MaxPieces"/>.
    /// </summary>
    private bool AddPiece(int first, ref int n, ulong host, uint pos, uint k)
    {
        if (n > 0)
        {
            ref Piece last = ref _pieces[first + n - 1];
            if (last.Host + last.Length == host && last.BufferOffset + last.Length == pos)
            {
                last.Length += k;
                return true;
            }
        }
        if (n == MaxPieces) return false;
        _pieces[first + n++] = new Piece { Host = host, BufferOffset = pos, Length = k };
        return true;
    }

    /// <summary>A write that allocates: all of it through the image's ordered path.</summary>
    private int WriteSync(UblkQueue queue, ushort tag, ulong offset, uint length, bool fua)
    {
        _image.Write(offset, queue.Buffers!.Span(tag, (int)length), fua);
        return (int)length;
    }

    private int Issue(UblkQueue queue, ushort tag, int n, uint length, bool write, bool fua)
    {
        if (n == 0) return (int)length;
        ref IoState s = ref _io[tag];
        s.Length = length;
        s.Pending = n;
        s.Error = 0;
        s.Write = write;
        s.Fua = fua;
        for (int i = 0; i < n; i++)
        {
            _pieces[tag * MaxPieces + i].Done = 0;
            IssuePiece(queue, tag, i, ref s);
        }
        return Backend.Pending;
    }

    private void IssuePiece(UblkQueue queue, ushort tag, int i, ref IoState s)
    {
        ref Piece p = ref _pieces[tag * MaxPieces + i];
        TagBuffers buffers = queue.Buffers!;
        ref io_uring_sqe sqe = ref queue.GetTargetSqe(tag, (byte)i);
        byte op = s.Write
            ? (buffers.Registered ? IORING_OP_WRITE_FIXED : IORING_OP_WRITE)
            : (buffers.Registered ? IORING_OP_READ_FIXED : IORING_OP_READ);
        IoUring.PrepRw(ref sqe, op, ImageSlot, buffers.Address(tag) + p.BufferOffset + p.Done, p.Length - p.Done, p.Host + p.Done);
        if (buffers.Registered) sqe.buf_index = buffers.RegisteredIndex(tag);
        if (s.Fua && s.Write) sqe.rw_flags = RWF_DSYNC;
        sqe.flags = IOSQE_FIXED_FILE;
    }

    public int Complete(UblkQueue queue, ushort tag, byte subOp, int res)
    {
        if (subOp == SubFsync) return res < 0 ? res : 0;
        ref IoState s = ref _io[tag];
        ref Piece p = ref _pieces[tag * MaxPieces + subOp];
        if (res == -Errno.EAGAIN || res == -Errno.EINTR)
        {
            IssuePiece(queue, tag, subOp, ref s);
            return Backend.Pending;
        }
        if (res < 0) { if (s.Error == 0) s.Error = res; }
        else if (res == 0)
        {
            // A data cluster may end past the end of the file: that reads as zeros. A write that makes no progress fails.
            if (s.Write) { if (s.Error == 0) s.Error = -Errno.EIO; }
            else queue.Buffers!.Span(tag, (int)s.Length).Slice((int)(p.BufferOffset + p.Done), (int)(p.Length - p.Done)).Clear();
        }
        else
        {
            p.Done += (uint)res;
            if (p.Done < p.Length)
            {
                IssuePiece(queue, tag, subOp, ref s);
                return Backend.Pending;
            }
        }
        if (--s.Pending > 0) return Backend.Pending;
        return s.Error != 0 ? s.Error : (int)s.Length;
    }

    public void Detach(UblkQueue queue) { }
}

/// <summary>qcow2:PATH[,l2-cache=SIZE]: opens the image (and its backing chain) once; the device's one queue owns it.</summary>
public sealed class Qcow2Spec(Qcow2Image image) : LeafSpec<Qcow2Backend>
{
    public static readonly BackendKind Kind = new("qcow2", "qcow2:PATH[,l2-cache=SIZE]",
        "a qcow2 image (v2/v3, backing chains raw or qcow2, compressed clusters read); one queue; l2-cache= bounds each image's L2 cache (default 32M)",
        Parse);

    public Qcow2Image Image { get; } = image;

    public override string Describe() => "qcow2:" + Image.Path + " (" + Image.Header.Size + " bytes, " + Image.Header.ClusterSize / 1024 + " KiB clusters" +
        (Image.Header.BackingFile != null ? ", backing " + Image.Header.BackingFile : "") + (Image.Writable ? "" : ", read-only") + ")";

    protected override Qcow2Backend Make() => new(Image);
    protected override int[] Files => Qcow2Backend.Files(Image);

    public override BackendCaps Caps => new()
        {
            Size = Image.Header.Size,
            ReadOnly = !Image.Writable,
            Discard = Image.Writable,
            WriteZeroes = Image.Writable,
            VolatileCache = true,
            DiscardGranularity = (uint)Image.Header.ClusterSize,
            MaxQueues = 1,
            MaxQueuesWhy = "one queue owns the qcow2 image's metadata (L2 cache, refcounts)",
        };

    public override void Dispose() => Image.Dispose();

    private static BackendSpec Parse(SpecReader r, string rest, SpecContext context)
    {
        string[] parts = rest.Split(',');
        string path = parts[0];
        if (path.Length == 0) throw r.Error("needs a path, e.g. qcow2:/images/disk.qcow2");
        ulong cache = Qcow2Image.DefaultL2CacheBytes;
        for (int i = 1; i < parts.Length; i++)
        {
            (string k, string v) = r.KeyValue(parts[i]);
            switch (k)
            {
                case "l2-cache":
                    cache = r.Size(v, "l2-cache size");
                    if (cache == 0) throw r.Error("l2-cache must be greater than 0");
                    break;
                default:
                    throw r.Error("unknown option '" + k + "' (l2-cache=)");
            }
        }
        if (!System.IO.File.Exists(path)) throw new SpecException("qcow2: image not found: " + path + " (make one with qemu-img create -f qcow2 " + path + " SIZE)", Errno.ENOENT);
        return new Qcow2Spec(Qcow2Image.Open(path, writable: !context.ReadOnly, cache));
    }
}
