using System;
using System.Buffers.Binary;
using System.IO;
using System.IO.Compression;
using Microsoft.Win32.SafeHandles;

namespace Ublk.Aot.Backends;

/// <summary>What a guest range maps to (qcow2.txt, "Cluster mapping").</summary>
public enum Qcow2Kind : byte
{
    /// <summary>Not allocated here: read from the backing file (zeros past its end, or with none).</summary>
    Unallocated,
    /// <summary>Reads as zeros (the zero flag, or a subcluster's reads-as-zero bit).</summary>
    Zero,
    /// <summary>At <see cref="Qcow2Mapping.Host"/> in the image file.</summary>
    Data,
    /// <summary>A compressed cluster: <see cref="Qcow2Mapping.CompressedBytes"/> bytes of raw deflate at <see cref="Qcow2Mapping.Host"/>.</summary>
    Compressed,
}

/// <param name="Length">Guest bytes from the asked offset that map alike (to the end of the cluster or subcluster).</param>
/// <param name="Host">Data: the host offset of the asked guest byte. Compressed: the compressed data's host offset.</param>
/// <param name="ClusterOffset">Compressed: the asked byte's offset inside the decompressed cluster.</param>
/// <param name="InPlace">Data whose host cluster has refcount exactly 1 (the COPIED bit): a write may go straight there.</param>
public readonly record struct Qcow2Mapping(Qcow2Kind Kind, uint Length, ulong Host, uint CompressedBytes, uint ClusterOffset, bool InPlace = false);

/// <summary>
/// A qcow2 image: the header, the L1 table in memory, L2 tables in an LRU cache, and the backing chain (raw or
/// qcow2, opened read-only, names relative to the image's directory, as qemu resolves them). Reads and writes here
/// are synchronous; the serving backend (<see cref="Qcow2Backend"/>) sends data I/O through the queue's io_uring
/// with <see cref="Map"/> and comes here for what needs metadata (allocation, backing, compressed clusters).
/// Not thread-safe: one thread (the device's one queue) owns an image once it is open.
/// </summary>
public sealed partial class Qcow2Image : IDisposable
{
    /// <summary>A chain deeper than this is refused (qemu has no fixed limit; a loop must end somewhere).</summary>
    public const int MaxChainDepth = 16;

    /// <summary>qemu's own default (since 3.1, on Linux): enough tables to map 32 MiB worth of them.</summary>
    public const ulong DefaultL2CacheBytes = 32u << 20;

    private const ulong OffsetMask = 0x00ff_ffff_ffff_fe00; // bits 9..55 of L1 and standard L2 entries
    private const ulong Copied = 1UL << 63, L2Compressed = 1UL << 62, L2ZeroFlag = 1;

    private readonly SafeFileHandle _fd;
    private readonly ulong[] _l1;
    private readonly int _csizeShift;
    private readonly ulong _csizeMask;
    private readonly byte[] _inflated;
    private byte[] _compressed = [];
    private long _inflatedHost = -1; // the host offset of the compressed cluster now in _inflated

    public string Path { get; }
    public Qcow2Header Header { get; }
    /// <summary>The backing image (qcow2), or null.</summary>
    public Qcow2Image? Backing { get; }
    /// <summary>The backing file when it is raw, or null.</summary>
    private readonly SafeFileHandle? _backingRaw;
    private readonly ulong _backingRawSize;

    private Qcow2Image(string path, int depth, bool writable, ulong l2CacheBytes)
    {
        Path = path;
        Writable = writable;
        try
        {
            _fd = File.OpenHandle(path, FileMode.Open, writable ? FileAccess.ReadWrite : FileAccess.Read);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new SpecException("qcow2: cannot open " + path + ": " + e.Message);
        }
        try
        {
            ulong length = (ulong)RandomAccess.GetLength(_fd);
            byte[] head = new byte[(int)Math.Min(length, 2u << 20)];
            ReadExactly(0, head, "the header");
            Header = Qcow2Header.Parse(head, length, path);
            int cb = Header.ClusterBits;
            // Compressed descriptor: bits 0..x-1 the host offset, x..61 the additional 512-byte sectors, x = 62 - (cb - 8).
            _csizeShift = 62 - (cb - 8);
            _csizeMask = (1UL << (cb - 8)) - 1;
            _inflated = new byte[Header.ClusterSize];
            if ((ulong)Header.L1Size * 8 > (256u << 20)) throw new SpecException("qcow2: " + path + ": an L1 table of " + Header.L1Size + " entries is too large");
            _l1 = new ulong[Header.L1Size];
            if (Header.L1Size > 0)
            {
                byte[] l1 = new byte[Header.L1Size * 8];
                ReadExactly(Header.L1TableOffset, l1, "the L1 table");
                for (int i = 0; i < _l1.Length; i++) _l1[i] = BinaryPrimitives.ReadUInt64BigEndian(l1.AsSpan(i * 8));
            }
            _l2Words = Header.L2Entries * (Header.ExtendedL2 ? 2 : 1);
            _l2Raw = new byte[Header.ClusterSize];
            ulong tables = Math.Max(1, Math.Min(l2CacheBytes / (ulong)Header.ClusterSize, Math.Max(1, (ulong)Header.L1Size)));
            _cacheTables = new ulong[Math.Min(tables, 1u << 16)][];
            _cacheKey = new ulong[_cacheTables.Length];
            _cacheUse = new long[_cacheTables.Length];
            _cacheIndex = new System.Collections.Generic.Dictionary<ulong, int>(_cacheTables.Length);
            if (Header.BackingFile is { } b)
            {
                if (depth >= MaxChainDepth) throw new SpecException("qcow2: " + path + ": the backing chain is deeper than " + MaxChainDepth);
                string full = System.IO.Path.IsPathRooted(b) ? b : System.IO.Path.Combine(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path)) ?? "/", b);
                string format = Header.BackingFormat ?? Probe(full);
                if (format == "qcow2") Backing = new Qcow2Image(full, depth + 1, writable: false, l2CacheBytes);
                else if (format == "raw")
                {
                    try { _backingRaw = File.OpenHandle(full, FileMode.Open, FileAccess.Read); }
                    catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                    {
                        throw new SpecException("qcow2: " + path + ": cannot open its backing file " + full + ": " + e.Message);
                    }
                    _backingRawSize = (ulong)RandomAccess.GetLength(_backingRaw);
                }
                else throw new SpecException("qcow2: " + path + ": backing file format '" + format + "' is not supported (raw and qcow2 are)");
            }
            if (writable) OpenForWriting();
        }
        catch (Qcow2Exception e)
        {
            Dispose();
            throw new SpecException(e.Message, e.Errno);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>
    /// Opens <paramref name="path"/> (for writing too if <paramref name="writable"/>) and its backing chain, read-only;
    /// one-line <see cref="SpecException"/> on any problem. <paramref name="l2CacheBytes"/> bounds each image's L2 cache.
    /// </summary>
    public static Qcow2Image Open(string path, bool writable = false, ulong l2CacheBytes = DefaultL2CacheBytes)
        => new(path, 0, writable, l2CacheBytes);

    public bool Writable { get; }

    /// <summary>The image's file descriptor, for the queue's io_uring (registered as a fixed file).</summary>
    public int Fd => (int)_fd.DangerousGetHandle();

    /// <summary>True if the image has a backing file: what is not allocated here reads from it, not as zeros.</summary>
    public bool HasBacking => Backing != null || _backingRaw != null;

    // The L2 cache: up to _cacheTables.Length tables, decoded to host order (extended entries: two words each),
    // looked up by the table's host offset, evicted least recently used. Tables are allocated on first use of a slot.
    private readonly int _l2Words;
    private readonly byte[] _l2Raw;
    private readonly ulong[][] _cacheTables;
    private readonly ulong[] _cacheKey;
    private readonly long[] _cacheUse;
    private readonly System.Collections.Generic.Dictionary<ulong, int> _cacheIndex;
    private long _cacheClock;

    /// <summary>Loads of L2 tables from the file (cache misses), for the stats and tests.</summary>
    public long L2Loads { get; private set; }

    /// <summary>The L2 table at host offset <paramref name="table"/>, from the cache or the file.</summary>
    private ulong[] L2(ulong table)
    {
        if (_cacheIndex.TryGetValue(table, out int slot))
        {
            _cacheUse[slot] = ++_cacheClock;
            return _cacheTables[slot];
        }
        ReadExactly(table, _l2Raw, "an L2 table"); // before a slot is taken: a failed read leaves the cache as it was
        ulong[] t = _cacheTables[CacheSlotFor(table)];
        for (int i = 0; i < t.Length; i++) t[i] = BinaryPrimitives.ReadUInt64BigEndian(_l2Raw.AsSpan(i * 8));
        L2Loads++;
        return t;
    }

    /// <summary>A free (or the least recently used) slot, now keyed by <paramref name="table"/>; its contents are stale.</summary>
    private int CacheSlotFor(ulong table)
    {
        int slot = 0;
        for (int i = 1; i < _cacheUse.Length && _cacheUse[slot] != 0; i++)
            if (_cacheUse[i] < _cacheUse[slot]) slot = i;
        if (_cacheUse[slot] != 0)
        {
            BeforeEvicting(slot);
            _cacheIndex.Remove(_cacheKey[slot]);
        }
        _cacheTables[slot] ??= new ulong[_l2Words];
        _cacheKey[slot] = table;
        _cacheUse[slot] = ++_cacheClock;
        _cacheIndex[table] = slot;
        return slot;
    }

    /// <summary>Where guest byte <paramref name="offset"/> (below the virtual size) is, and how far that holds.</summary>
    public Qcow2Mapping Map(ulong offset)
    {
        Qcow2Header h = Header;
        int cb = h.ClusterBits;
        ulong vcluster = offset >> cb;
        uint inCluster = (uint)(offset & ((1UL << cb) - 1));
        uint toClusterEnd = (uint)h.ClusterSize - inCluster;
        ulong l1Index = vcluster / (ulong)h.L2Entries;
        int l2Index = (int)(vcluster % (ulong)h.L2Entries);
        if (l1Index >= (ulong)_l1.Length) return new(Qcow2Kind.Unallocated, toClusterEnd, 0, 0, 0);
        ulong l2Table = _l1[l1Index] & OffsetMask;
        if (l2Table == 0) return new(Qcow2Kind.Unallocated, toClusterEnd, 0, 0, 0);
        if (l2Table % (ulong)h.ClusterSize != 0) throw Corrupt("L1 entry " + l1Index + " points at 0x" + l2Table.ToString("x", Inv) + ", not a cluster boundary");

        ulong[] t = L2(l2Table);
        ulong entry = t[h.ExtendedL2 ? 2 * l2Index : l2Index];
        if ((entry & L2Compressed) != 0)
        {
            return new(Qcow2Kind.Compressed, toClusterEnd, CompressedHost(entry), CompressedLength(entry), inCluster);
        }
        ulong hostCluster = entry & OffsetMask;
        if (hostCluster % (ulong)h.ClusterSize != 0) throw Corrupt("the L2 entry of guest cluster " + vcluster + " points at 0x" + hostCluster.ToString("x", Inv) + ", not a cluster boundary");
        if (!h.ExtendedL2)
        {
            if ((entry & L2ZeroFlag) != 0 && h.Version == 3) return new(Qcow2Kind.Zero, toClusterEnd, 0, 0, 0);
            if (hostCluster == 0) return new(Qcow2Kind.Unallocated, toClusterEnd, 0, 0, 0);
            return new(Qcow2Kind.Data, toClusterEnd, hostCluster + inCluster, 0, 0, (entry & Copied) != 0);
        }
        // Extended L2: 32 subclusters; bitmap bit i allocated, bit 32 + i reads as zero ("Extended L2 Entries").
        ulong bitmap = t[2 * l2Index + 1];
        int scBits = cb - 5;
        int sc = (int)(inCluster >> scBits);
        uint toScEnd = (uint)(1 << scBits) - (inCluster & (uint)((1 << scBits) - 1));
        bool alloc = (bitmap & (1UL << sc)) != 0, zero = (bitmap & (1UL << (32 + sc))) != 0;
        if (alloc && zero) throw Corrupt("subcluster " + sc + " of guest cluster " + vcluster + " is both allocated and zero");
        if (zero) return new(Qcow2Kind.Zero, toScEnd, 0, 0, 0);
        if (!alloc) return new(Qcow2Kind.Unallocated, toScEnd, 0, 0, 0);
        if (hostCluster == 0) throw Corrupt("guest cluster " + vcluster + " has allocated subclusters and no host cluster");
        return new(Qcow2Kind.Data, toScEnd, hostCluster + inCluster, 0, 0, (entry & Copied) != 0);
    }

    /// <summary>Reads guest bytes at <paramref name="offset"/> into <paramref name="into"/> (past the virtual size: zeros).</summary>
    public void Read(ulong offset, Span<byte> into)
    {
        while (into.Length > 0)
        {
            if (offset >= Header.Size)
            {
                into.Clear();
                return;
            }
            Qcow2Mapping m = Map(offset);
            int n = (int)Math.Min(Math.Min((ulong)m.Length, (ulong)into.Length), Header.Size - offset);
            Span<byte> piece = into[..n];
            switch (m.Kind)
            {
                case Qcow2Kind.Zero: piece.Clear(); break;
                case Qcow2Kind.Data: ReadOrZeros(m.Host, piece); break;
                case Qcow2Kind.Compressed:
                    Inflate(m);
                    _inflated.AsSpan((int)m.ClusterOffset, n).CopyTo(piece);
                    break;
                default: ReadBacking(offset, piece); break;
            }
            offset += (ulong)n;
            into = into[n..];
        }
    }

    private void ReadBacking(ulong offset, Span<byte> into)
    {
        if (Backing != null)
        {
            Backing.Read(offset, into); // past the backing image's size it reads zeros
            return;
        }
        if (_backingRaw == null || offset >= _backingRawSize)
        {
            into.Clear();
            return;
        }
        int have = (int)Math.Min((ulong)into.Length, _backingRawSize - offset);
        int got = RandomAccess.Read(_backingRaw, into[..have], (long)offset);
        into[got..].Clear();
    }

    /// <summary>
    /// Decompresses the cluster at m.Host into _inflated: raw deflate (qemu's zlib compression type writes no zlib
    /// header), which ends once one cluster has come out.
    /// </summary>
    private void Inflate(in Qcow2Mapping m)
    {
        if (_inflatedHost == (long)m.Host) return;
        _inflatedHost = -1;
        if (_compressed.Length < m.CompressedBytes) _compressed = new byte[Math.Max(m.CompressedBytes, (uint)Header.ClusterSize + 1024)];
        // The last compressed cluster may end before its last sector does: read what the file has.
        int got = RandomAccess.Read(_fd, _compressed.AsSpan(0, (int)m.CompressedBytes), (long)m.Host);
        using var input = new MemoryStream(_compressed, 0, got, writable: false);
        using var inflate = new DeflateStream(input, CompressionMode.Decompress);
        int done = 0;
        try
        {
            while (done < _inflated.Length)
            {
                int r = inflate.Read(_inflated, done, _inflated.Length - done);
                if (r == 0) break;
                done += r;
            }
        }
        catch (InvalidDataException)
        {
            throw Corrupt("the compressed cluster at 0x" + m.Host.ToString("x", Inv) + " does not inflate");
        }
        if (done < _inflated.Length) throw Corrupt("the compressed cluster at 0x" + m.Host.ToString("x", Inv) + " inflates to " + done + " bytes, not " + _inflated.Length);
        _inflatedHost = (long)m.Host;
    }

    private static string Probe(string path)
    {
        Span<byte> magic = stackalloc byte[4];
        try
        {
            using SafeFileHandle f = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
            return RandomAccess.Read(f, magic, 0) == 4 && BinaryPrimitives.ReadUInt32BigEndian(magic) == Qcow2Header.Magic ? "qcow2" : "raw";
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new SpecException("qcow2: cannot open the backing file " + path + ": " + e.Message);
        }
    }

    /// <summary>Data clusters may end past the end of the file (qemu reads that as zeros, as a file's hole).</summary>
    private void ReadOrZeros(ulong offset, Span<byte> into)
    {
        int done = 0;
        while (done < into.Length)
        {
            int r = RandomAccess.Read(_fd, into[done..], (long)offset + done);
            if (r <= 0) break;
            done += r;
        }
        into[done..].Clear();
    }

    private void ReadExactly(ulong offset, Span<byte> into, string what)
    {
        int done = 0;
        while (done < into.Length)
        {
            int r = RandomAccess.Read(_fd, into[done..], (long)offset + done);
            if (r <= 0) throw Corrupt(what + " at 0x" + offset.ToString("x", Inv) + " lies past the end of the file");
            done += r;
        }
    }

    private static readonly IFormatProvider Inv = System.Globalization.CultureInfo.InvariantCulture;

    private Qcow2Exception Corrupt(string what) => new("qcow2: " + Path + ": corrupt image: " + what);

    public void Dispose()
    {
        if (_fd != null && !_fd.IsClosed) WriteBackOnClose();
        _fd?.Dispose();
        _backingRaw?.Dispose();
        Backing?.Dispose();
    }
}
