using System;
using System.Buffers.Binary;
using System.IO;
using Ublk.Aot.Interop;

namespace Ublk.Aot.Backends;

/// <summary>A qcow2 I/O or consistency failure while serving: the request fails with <see cref="UblkAotException.Errno"/>.</summary>
public sealed class Qcow2Exception(string message, int errno = Errno.EIO) : UblkAotException(message, errno);

/// <summary>
/// The write side of <see cref="Qcow2Image"/>: cluster allocation, copy-on-write, refcounts, discard and zeroing,
/// ordered so that a crash at any instant leaves at worst leaked clusters (docs/qcow2-design.md, "Crash safety").
/// Metadata is written back, as a disk with a volatile cache does, not through:
/// <list type="number">
/// <item>a write that allocates takes a cluster (its refcount written now; a new refcount block is written and made
/// durable before the table entry that points at it), writes its data (the whole cluster, the old contents copied
/// in around a partial write, or only the new bytes where the cluster is past the end of the file over zeros) and,
/// for a new L2 table, zeros; then it changes the L2 entry (and L1 entry) in memory only: the cached table is
/// dirty, and what the entry stopped pointing at is remembered;</item>
/// <item><see cref="WriteBack"/> — on FLUSH, FUA, when half of a cache that cannot hold every table is dirty, when
/// a dirty table would be evicted, and when the image is closed — makes it durable: fdatasync (data, refcounts, new tables), the dirty L2
/// tables written whole and the new L1 entries (each entry lies inside one sector), fdatasync, and only then the
/// refcounts of what was let go drop (compressed clusters: every host cluster they touch).</item>
/// </list>
/// So one fdatasync pair serves every allocating write between two flushes, and a crash loses only writes that no
/// flush covered. A write into a cluster the image already owns (COPIED, and for extended L2 every touched subcluster
/// allocated) touches no metadata at all. Free clusters are never reused within one open image: a cluster read by a
/// request still in flight cannot become another one's data. Clusters are taken from the end of the file (the first
/// one whose refcount is 0), so the image grows as it fills.
/// </summary>
public sealed partial class Qcow2Image
{
    private const ulong AllAllocated = 0x0000_0000_ffff_ffff, AllZero = 0xffff_ffff_0000_0000;

    private ulong[] _refTable = [];
    private ulong _refTableOffset; // where _refTable lives now (Header has it as opened; growing moves it)
    private ulong _refPerBlock;
    private int _refBytes;
    private ulong _nextFree; // a cluster index: allocation looks here first
    private ulong _fileEnd;  // the image file's length (every write and extension goes through WriteAt/Extend)
    private byte[] _cow = [];
    private byte[] _refBlock = [];
    private byte[] _zeros = [];

    // What WriteBack has to write: dirty cache slots (the reader's cache, by slot), new L1 entries, and what the
    // changed entries let go of. Grown once to the largest need, then reused.
    private bool[] _dirty = [];
    private int _dirtyCount;
    private ulong[] _dirtyL1 = new ulong[8];
    private int _dirtyL1Count;
    private Freed[] _freed = new Freed[8];
    private int _freedCount;
    private byte[] _l2Out = [];

    private readonly record struct Freed(ulong Host, uint CompressedBytes);

    /// <summary>Clusters this image allocated since it was opened (data, L2 tables and refcount blocks).</summary>
    public long ClustersAllocated { get; private set; }

    private void OpenForWriting()
    {
        Qcow2Header h = Header;
        string at = "qcow2: " + Path + ": ";
        if (h.Corrupt) throw new SpecException(at + "the image is marked corrupt: repair it with qemu-img check -r all, or serve it with --read-only");
        if (h.Dirty) throw new SpecException(at + "the image is dirty (lazy refcounts not written back): repair it with qemu-img check -r all, or serve it with --read-only");
        if (h.Snapshots > 0) throw new SpecException(at + "the image has " + h.Snapshots + " internal snapshot(s): writing is not supported, serve it with --read-only");
        if (h.RefcountOrder < 3) throw new SpecException(at + "refcount_bits " + (1 << h.RefcountOrder) + " is not supported for writing (8 to 64 are): serve it with --read-only");
        _refBytes = 1 << (h.RefcountOrder - 3);
        _refPerBlock = (ulong)h.ClusterSize / (ulong)_refBytes;
        ulong entries = (ulong)h.RefcountTableClusters * (ulong)h.ClusterSize / 8;
        if (entries > (32u << 20)) throw new SpecException(at + "a refcount table of " + entries + " entries is too large");
        _refTable = new ulong[entries];
        byte[] raw = new byte[entries * 8];
        ReadExactly(h.RefcountTableOffset, raw, "the refcount table");
        _refTableOffset = h.RefcountTableOffset;
        for (int i = 0; i < _refTable.Length; i++) _refTable[i] = BinaryPrimitives.ReadUInt64BigEndian(raw.AsSpan(i * 8)) & OffsetMask;
        _cow = new byte[h.ClusterSize];
        _refBlock = new byte[h.ClusterSize];
        _zeros = new byte[h.ClusterSize];
        _l2Out = new byte[h.ClusterSize];
        _dirty = new bool[_cacheTables.Length];
        ulong length = (ulong)RandomAccess.GetLength(_fd);
        _fileEnd = length;
        _nextFree = (length + (ulong)h.ClusterSize - 1) >> h.ClusterBits;
        // Autoclear bits are cleared by any writer that does not keep what they promise (qcow2.txt, "autoclear_features"):
        // we keep none (bitmaps, the raw external data flag), so all of them go before the first write.
        if (h.Version == 3 && h.Autoclear != 0)
        {
            Span<byte> zero = stackalloc byte[8];
            zero.Clear();
            WriteAt(88, zero);
            Sync();
        }
    }

    private void RequireWritable()
    {
        if (!Writable) throw new Qcow2Exception("qcow2: " + Path + " is open read-only", Errno.EROFS);
    }

    /// <summary>
    /// Writes guest bytes at <paramref name="offset"/> (below the virtual size); with <paramref name="fua"/> they are
    /// durable when this returns. Throws <see cref="Qcow2Exception"/> or IOException.
    /// </summary>
    public void Write(ulong offset, ReadOnlySpan<byte> data, bool fua)
    {
        RequireWritable();
        if (offset > Header.Size || (ulong)data.Length > Header.Size - offset) throw new Qcow2Exception("qcow2: write beyond the virtual size", Errno.EINVAL);
        int cs = Header.ClusterSize;
        while (data.Length > 0)
        {
            int inCluster = (int)(offset & (ulong)(cs - 1));
            int n = Math.Min(cs - inCluster, data.Length);
            WriteCluster(offset - (ulong)inCluster, inCluster, data[..n]);
            offset += (ulong)n;
            data = data[n..];
        }
        Commit(fua);
    }

    /// <summary>
    /// Zeroes [offset, offset+length): whole clusters by their L2 entries (the zero flag where a backing file would
    /// show through, unallocated where not; with <paramref name="keepAllocated"/> on v3 the cluster stays allocated
    /// and reads as zero), the partial clusters at the ends by writing zeros where they do not read as zeros already.
    /// A <paramref name="discard"/> does the same except that it never keeps a cluster allocated, so a discarded range
    /// reads as zeros afterwards like a hole punched in a raw file; on a version 2 image with a backing file (no zero
    /// flag: zeros would have to be written over every cluster) a discard is dropped, as the block layer allows.
    /// </summary>
    public void Zero(ulong offset, ulong length, bool discard, bool keepAllocated, bool fua)
    {
        RequireWritable();
        if (offset > Header.Size || length > Header.Size - offset) throw new Qcow2Exception("qcow2: zeroing beyond the virtual size", Errno.EINVAL);
        if (discard && Header.Version == 2 && HasBacking) return;
        ulong cs = (ulong)Header.ClusterSize, end = offset + length;
        ulong first = (offset + cs - 1) & ~(cs - 1), last = end & ~(cs - 1);
        if (first >= last)
        {
            WriteZerosUnlessZero(offset, length, fua); // no whole cluster
            return;
        }
        if (offset < first) WriteZerosUnlessZero(offset, first - offset, fua);
        if (last < end) WriteZerosUnlessZero(last, end - last, fua);
        if (Header.Version == 2 && HasBacking)
        {
            // No zero flag in version 2: unallocating would show the backing file.
            WriteZeros(first, last - first, fua);
            return;
        }
        for (ulong c = first; c < last; c += cs) ZeroCluster(c, keepAllocated && !discard);
        Commit(fua);
    }

    /// <summary>Part of a cluster: zeros written unless it reads as zeros already (so zeroing a hole allocates nothing).</summary>
    private void WriteZerosUnlessZero(ulong offset, ulong length, bool fua)
    {
        if (!ReadsAsZero(offset, length)) WriteZeros(offset, length, fua);
    }

    /// <summary>True if every byte of the guest range reads as zero by its mapping (zero flags, or unallocated with no backing file).</summary>
    private bool ReadsAsZero(ulong offset, ulong length)
    {
        for (ulong pos = 0; pos < length;)
        {
            Qcow2Mapping m = Map(offset + pos);
            if (m.Kind != Qcow2Kind.Zero && (m.Kind != Qcow2Kind.Unallocated || HasBacking)) return false;
            pos += m.Length;
        }
        return true;
    }

    private void WriteZeros(ulong offset, ulong length, bool fua)
    {
        while (length > 0)
        {
            int n = (int)Math.Min(length, (ulong)_zeros.Length);
            Write(offset, _zeros.AsSpan(0, n), fua);
            offset += (ulong)n;
            length -= (ulong)n;
        }
    }

    /// <summary>
    /// The end of a Write or Zero call: durable now if <paramref name="fua"/>, or if the unwritten metadata has grown
    /// large: lists of thousands, or half a cache that cannot hold every table (so that a new table rarely has to
    /// evict a dirty one; a cache with a slot per L1 entry never evicts).
    /// </summary>
    private void Commit(bool fua)
    {
        bool crowded = _dirty.Length < _l1.Length && _dirtyCount > _dirty.Length / 2;
        if (fua || crowded || _dirtyL1Count > 4096 || _freedCount > 4096) WriteBack();
    }

    /// <summary>True while some L1/L2 change or refcount drop is only in memory: a FLUSH must call <see cref="WriteBack"/>.</summary>
    public bool HasUnwrittenMetadata => _dirtyCount > 0 || _dirtyL1Count > 0 || _freedCount > 0;

    /// <summary>fdatasyncs of the image since it was opened (each <see cref="WriteBack"/> does one or two).</summary>
    public long Syncs { get; private set; }

    /// <summary>
    /// Makes everything written so far durable, metadata too (see the class summary for the order): what a FLUSH
    /// does. Throws <see cref="Qcow2Exception"/> or IOException; what was not written stays dirty.
    /// </summary>
    public void WriteBack()
    {
        Sync();
        if (_dirtyCount > 0 || _dirtyL1Count > 0)
        {
            for (int slot = 0; slot < _dirty.Length; slot++)
            {
                if (!_dirty[slot]) continue;
                ulong[] t = _cacheTables[slot];
                for (int i = 0; i < t.Length; i++) BinaryPrimitives.WriteUInt64BigEndian(_l2Out.AsSpan(i * 8), t[i]);
                WriteAt(_cacheKey[slot], _l2Out);
                _dirty[slot] = false;
                _dirtyCount--;
            }
            Span<byte> e = stackalloc byte[8];
            for (int i = 0; i < _dirtyL1Count; i++)
            {
                ulong index = _dirtyL1[i];
                BinaryPrimitives.WriteUInt64BigEndian(e, _l1[index]);
                WriteAt(Header.L1TableOffset + index * 8, e);
            }
            _dirtyL1Count = 0;
            Sync();
        }
        // Only now is no entry pointing at what was let go: its refcounts may drop (durable by the next sync; a
        // crash before that leaks it).
        while (_freedCount > 0) Unreference(_freed[--_freedCount]);
    }

    /// <summary>On close: unwritten metadata written back, a failure said in one line (the writes it covered are lost, the image is not corrupt).</summary>
    private void WriteBackOnClose()
    {
        if (!Writable || !HasUnwrittenMetadata) return;
        try { WriteBack(); }
        catch (Exception e) when (e is Qcow2Exception or IOException)
        {
            Console.Error.WriteLine("ublk-aot: qcow2: " + Path + ": writing back metadata on close failed: " + e.Message);
        }
    }

    /// <summary>One cluster's part of a write: straight to the cluster the image owns, or copy-on-write into one.</summary>
    private void WriteCluster(ulong clusterStart, int inCluster, ReadOnlySpan<byte> data)
    {
        Qcow2Header h = Header;
        ulong vcluster = clusterStart >> h.ClusterBits;
        ulong table = EntryOf(vcluster, out ulong l1Index, out int l2Index, out ulong entry, out ulong bitmap);
        bool compressed = (entry & L2Compressed) != 0;
        ulong host = compressed ? 0 : entry & OffsetMask;
        bool owned = !compressed && host != 0 && (entry & Copied) != 0;
        if (owned && host % (ulong)h.ClusterSize != 0) throw Corrupt("the L2 entry of guest cluster " + vcluster + " points at 0x" + host.ToString("x", Inv) + ", not a cluster boundary");

        int scBits = h.ClusterBits - 5;
        int sc0 = inCluster >> scBits, sc1 = (inCluster + data.Length - 1) >> scBits;
        if (owned)
        {
            bool direct = h.ExtendedL2 ? (bitmap & SubclusterMask(sc0, sc1)) == SubclusterMask(sc0, sc1) : (entry & L2ZeroFlag) == 0 || h.Version < 3;
            if (direct)
            {
                WriteAt(host + (ulong)inCluster, data);
                return;
            }
        }

        // Copy-on-write: the cluster's current contents around the new data, into a cluster the image owns.
        ulong target = owned ? host : AllocateCluster();
        if (data.Length == h.ClusterSize) WriteAt(target, data);
        else if (!owned && target >= _fileEnd && ReadsAsZero(clusterStart, (ulong)h.ClusterSize))
        {
            // A new cluster past the end of the file over what reads as zeros: the file's hole is the copy. Only the
            // new bytes are written, and the file is extended over the rest (made durable by Commit's fdatasync).
            WriteAt(target + (ulong)inCluster, data);
            Extend(target + (ulong)h.ClusterSize);
        }
        else
        {
            Span<byte> c = _cow;
            Read(clusterStart, c);
            data.CopyTo(c[inCluster..]);
            if (!owned || !h.ExtendedL2) WriteAt(target, c);
            else
            {
                // In place, extended L2: rewrite only what is new; an allocated subcluster outside the write may have a
                // write of its own in flight.
                int scSize = 1 << scBits;
                for (int s = 0; s < 32; s++)
                {
                    int from = s * scSize, to = from + scSize;
                    if ((bitmap & (1UL << s)) != 0)
                    {
                        from = Math.Max(from, inCluster);
                        to = Math.Min(to, inCluster + data.Length);
                        if (from >= to) continue;
                    }
                    WriteAt(target + (ulong)from, c[from..to]);
                }
            }
        }
        if (table == 0) table = NewTable(l1Index);
        SetL2(table, l2Index, target | Copied, h.ExtendedL2 ? AllAllocated : 0);
        if (compressed) AddFreed(new Freed(CompressedHost(entry), CompressedLength(entry)));
        else if (host != 0 && !owned) AddFreed(new Freed(host, 0));
    }

    /// <summary>
    /// Prepares guest offset <paramref name="offset"/>'s cluster to take a write's data as an I/O of the caller's
    /// (an SQE) instead of through <see cref="Write"/>, when that cannot lose or invent a byte: the cluster is not
    /// allocated (unallocated or zero-flagged with no host cluster), the whole of it reads as zeros, and the cluster
    /// it gets lies at or past the end of the file. Then, as <see cref="Write"/> would: the cluster is allocated (its
    /// refcount written), the file extended over it (a hole: zeros, its old contents), the L2 entry changed in the
    /// cache (written back later). On true <see cref="Map"/> shows the cluster in place, and the caller writes its
    /// bytes there. Until they land, the cluster reads as zeros, what it read before; a write-back meanwhile (a
    /// FLUSH does not cover a write still in flight) or a crash can only leave that, never a wrong byte. False:
    /// nothing changed, the write must take <see cref="Write"/> (copy-on-write from a backing file or a compressed
    /// cluster, an allocated zero-flagged cluster, a free cluster inside the file that may hold old bytes).
    /// </summary>
    public bool TryAllocateForWrite(ulong offset)
    {
        RequireWritable();
        Qcow2Header h = Header;
        if (offset >= h.Size) throw new Qcow2Exception("qcow2: write beyond the virtual size", Errno.EINVAL);
        ulong cs = (ulong)h.ClusterSize;
        ulong clusterStart = offset & ~(cs - 1);
        ulong vcluster = clusterStart >> h.ClusterBits;
        ulong table = EntryOf(vcluster, out ulong l1Index, out int l2Index, out ulong entry, out _);
        if ((entry & L2Compressed) != 0 || (entry & OffsetMask) != 0) return false;
        if (!ReadsAsZero(clusterStart, cs)) return false;
        while (Refcount(_nextFree) != 0) _nextFree++;
        if ((_nextFree << h.ClusterBits) < _fileEnd) return false;
        ulong target = AllocateCluster();
        Extend(target + cs);
        if (table == 0) table = NewTable(l1Index);
        SetL2(table, l2Index, target | Copied, h.ExtendedL2 ? AllAllocated : 0);
        AllocatedForSqe++;
        Commit(fua: false);
        return true;
    }

    /// <summary>Clusters <see cref="TryAllocateForWrite"/> prepared for a write's data as an SQE since the image was opened.</summary>
    public long AllocatedForSqe { get; private set; }

    /// <summary>One whole cluster of a Zero call: its new L2 entry, and the cluster it let go of.</summary>
    private void ZeroCluster(ulong clusterStart, bool keepAllocated)
    {
        Qcow2Header h = Header;
        ulong vcluster = clusterStart >> h.ClusterBits;
        ulong table = EntryOf(vcluster, out ulong l1Index, out int l2Index, out ulong entry, out ulong bitmap);
        bool compressed = (entry & L2Compressed) != 0;
        ulong host = compressed ? 0 : entry & OffsetMask;
        bool keep = keepAllocated && !compressed && host != 0 && (entry & Copied) != 0 && h.Version == 3;
        ulong newEntry, newBitmap = 0;
        if (h.ExtendedL2)
        {
            newEntry = keep ? host | Copied : 0;
            newBitmap = keep || HasBacking ? AllZero : 0;
        }
        else if (keep) newEntry = host | Copied | L2ZeroFlag;
        else newEntry = HasBacking ? L2ZeroFlag : 0; // (a v2 image with a backing file never gets here)
        if (newEntry == entry && newBitmap == bitmap) return; // (so with no table: nothing shows through, nothing to do)
        if (table == 0) table = NewTable(l1Index);
        SetL2(table, l2Index, newEntry, newBitmap);
        if (compressed) AddFreed(new Freed(CompressedHost(entry), CompressedLength(entry)));
        else if (host != 0 && !keep) AddFreed(new Freed(host, 0));
    }

    /// <summary>
    /// Guest cluster <paramref name="vcluster"/>'s L2 entry (and extended bitmap; both 0 without a table), and its
    /// table's host offset (0: none yet).
    /// </summary>
    private ulong EntryOf(ulong vcluster, out ulong l1Index, out int l2Index, out ulong entry, out ulong bitmap)
    {
        Qcow2Header h = Header;
        l1Index = vcluster / (ulong)h.L2Entries;
        l2Index = (int)(vcluster % (ulong)h.L2Entries);
        ulong table = TableFor(l1Index);
        entry = bitmap = 0;
        if (table != 0)
        {
            ulong[] t = L2(table);
            entry = t[h.ExtendedL2 ? 2 * l2Index : l2Index];
            if (h.ExtendedL2) bitmap = t[2 * l2Index + 1];
        }
        return table;
    }

    /// <summary>The L2 table of <paramref name="l1Index"/> (its in-memory L1 entry, new tables included), or 0.</summary>
    private ulong TableFor(ulong l1Index)
    {
        if (l1Index >= (ulong)_l1.Length) throw Corrupt("guest offset beyond the L1 table");
        ulong l1 = _l1[l1Index];
        if (l1 == 0) return 0;
        // Without internal snapshots (refused for writing) every L2 table has refcount 1.
        if ((l1 & Copied) == 0) throw Corrupt("L1 entry " + l1Index + " is shared but the image has no snapshots");
        return l1 & OffsetMask;
    }

    /// <summary>A new L2 table for <paramref name="l1Index"/>: allocated, written as zeros, in the cache, and in the in-memory L1 (its L1 entry unwritten).</summary>
    private ulong NewTable(ulong l1Index)
    {
        ulong table = AllocateCluster();
        WriteAt(table, _zeros);
        Array.Clear(_cacheTables[_cacheIndex.TryGetValue(table, out int s) ? s : CacheSlotFor(table)]);
        _l1[l1Index] = table | Copied;
        if (_dirtyL1Count == _dirtyL1.Length) Array.Resize(ref _dirtyL1, _dirtyL1.Length * 2);
        _dirtyL1[_dirtyL1Count++] = l1Index;
        return table;
    }

    /// <summary>Changes an L2 entry in the cache; the table is dirty until <see cref="WriteBack"/>.</summary>
    private void SetL2(ulong table, int l2Index, ulong entry, ulong bitmap)
    {
        ulong[] t = L2(table);
        if (Header.ExtendedL2)
        {
            t[2 * l2Index] = entry;
            t[2 * l2Index + 1] = bitmap;
        }
        else t[l2Index] = entry;
        int slot = _cacheIndex[table];
        if (!_dirty[slot])
        {
            _dirty[slot] = true;
            _dirtyCount++;
        }
    }

    /// <summary>Before the cache reuses <paramref name="slot"/>: a dirty table is written back first (with all the others).</summary>
    private void BeforeEvicting(int slot)
    {
        if (_dirtyCount > 0 && _dirty[slot]) WriteBack();
    }

    /// <summary>A compressed L2 descriptor's host byte offset (bits 0..x-1).</summary>
    private ulong CompressedHost(ulong entry) => entry & ((1UL << _csizeShift) - 1);

    /// <summary>A compressed L2 descriptor's length in bytes: its 512-byte sectors, less the offset into the first.</summary>
    private uint CompressedLength(ulong entry)
    {
        ulong host = CompressedHost(entry);
        ulong sectors = ((entry >> _csizeShift) & _csizeMask) + 1;
        return (uint)(sectors * 512 - (host & 511));
    }

    /// <summary>Drops the references an L2 entry held: one cluster, or every host cluster a compressed cluster touches.</summary>
    private void Unreference(Freed f)
    {
        int cb = Header.ClusterBits;
        ulong firstCluster = f.Host >> cb;
        ulong lastCluster = f.CompressedBytes == 0 ? firstCluster : (f.Host + f.CompressedBytes - 1) >> cb;
        for (ulong c = firstCluster; c <= lastCluster; c++)
        {
            ulong r = Refcount(c);
            if (r == 0) throw Corrupt("cluster 0x" + (c << cb).ToString("x", Inv) + " was referenced with refcount 0");
            SetRefcount(c, r - 1);
        }
    }

    /// <summary>A cluster whose refcount is 0, now 1 (not yet durable): its host offset.</summary>
    private ulong AllocateCluster()
    {
        while (Refcount(_nextFree) != 0) _nextFree++;
        ulong c = _nextFree++;
        SetRefcount(c, 1);
        ClustersAllocated++;
        return c << Header.ClusterBits;
    }

    private ulong Refcount(ulong cluster)
    {
        ulong t = cluster / _refPerBlock;
        if (t >= (ulong)_refTable.Length || _refTable[t] == 0) return 0;
        Span<byte> b = stackalloc byte[8];
        ReadExactly(_refTable[t] + (cluster % _refPerBlock) * (ulong)_refBytes, b[.._refBytes], "a refcount entry");
        return RefValue(b[.._refBytes]);
    }

    private void SetRefcount(ulong cluster, ulong value)
    {
        ulong t = cluster / _refPerBlock;
        if (t >= (ulong)_refTable.Length) GrowRefcountTable(t);
        if (_refTable[t] == 0) NewRefcountBlock(t);
        Span<byte> b = stackalloc byte[8];
        PutRef(b[.._refBytes], value);
        WriteAt(_refTable[t] + (cluster % _refPerBlock) * (ulong)_refBytes, b[.._refBytes]);
    }

    /// <summary>
    /// A refcount block for table entry <paramref name="t"/>: a free cluster, its own refcount set (in itself when it
    /// falls in its own range, else first in the block that covers it), written and made durable before the table
    /// entry that points at it.
    /// </summary>
    private void NewRefcountBlock(ulong t)
    {
        while (Refcount(_nextFree) != 0) _nextFree++;
        ulong b = _nextFree++;
        bool self = b / _refPerBlock == t;
        if (!self) SetRefcount(b, 1); // may make a block of its own; done before _refBlock is filled
        Array.Clear(_refBlock);
        if (self) PutRef(_refBlock.AsSpan((int)(b % _refPerBlock) * _refBytes, _refBytes), 1);
        WriteAt(b << Header.ClusterBits, _refBlock);
        Sync();
        Span<byte> e = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(e, b << Header.ClusterBits);
        WriteAt(_refTableOffset + t * 8, e);
        _refTable[t] = b << Header.ClusterBits;
        ClustersAllocated++;
    }

    /// <summary>
    /// A larger refcount table, one that has entry <paramref name="t"/> (the table covers too little of the file: a
    /// cluster past what it covers needs a refcount). The new table and the refcount blocks it needs go at the end of
    /// the file, past everything the old table covers, as one run of clusters: [table][blocks], each block holding
    /// refcount 1 for the clusters of that run it covers. Then, in this order: blocks and table written, fdatasync,
    /// the header's refcount_table_offset and refcount_table_clusters (one 12-byte write in the first sector),
    /// fdatasync, and only then the old table's clusters dropped to refcount 0. A crash before the header write
    /// leaves clusters nothing covers or references; after it, at worst the old table leaked.
    /// </summary>
    private void GrowRefcountTable(ulong t)
    {
        Qcow2Header h = Header;
        ulong cs = (ulong)h.ClusterSize;
        ulong oldEntries = (ulong)_refTable.Length;
        ulong start = Math.Max(_nextFree, oldEntries * _refPerBlock); // nothing there has a refcount
        ulong entries = Math.Max(oldEntries * 2, t + 1), tableClusters, blocks;
        // The run's length depends on how many blocks cover it, which depends on its length: iterate to a fixed point.
        for (blocks = 0; ; )
        {
            tableClusters = (entries * 8 + cs - 1) / cs;
            ulong end = start + tableClusters + blocks;
            ulong firstBlock = start / _refPerBlock, lastBlock = (end - 1) / _refPerBlock;
            ulong need = lastBlock - firstBlock + 1 + (t < firstBlock || t > lastBlock ? 1UL : 0);
            if (lastBlock >= entries) { entries = lastBlock + 1; continue; }
            if (need == blocks) break;
            blocks = need;
        }
        if (entries > (32u << 20)) throw new Qcow2Exception("qcow2: " + Path + ": a refcount table of " + entries + " entries is too large: the image cannot grow further", Errno.ENOSPC);
        ulong runEnd = start + tableClusters + blocks;
        var table = new ulong[entries];
        Array.Copy(_refTable, table, _refTable.Length);
        ulong next = start + tableClusters;
        for (ulong b = start / _refPerBlock; b <= (runEnd - 1) / _refPerBlock; b++) PlaceBlock(table, b, ref next, start, runEnd);
        if (table[t] == 0) PlaceBlock(table, t, ref next, start, runEnd);
        if (next != runEnd) throw new InvalidOperationException("refcount table growth: the run is " + (runEnd - start) + " clusters, " + (next - start) + " placed");

        byte[] raw = new byte[tableClusters * cs];
        for (ulong i = 0; i < entries; i++) BinaryPrimitives.WriteUInt64BigEndian(raw.AsSpan((int)(i * 8)), table[i]);
        WriteAt(start * cs, raw);
        Sync();
        Span<byte> header = stackalloc byte[12];
        BinaryPrimitives.WriteUInt64BigEndian(header, start * cs);
        BinaryPrimitives.WriteUInt32BigEndian(header[8..], (uint)tableClusters);
        WriteAt(48, header); // refcount_table_offset, refcount_table_clusters
        Sync();
        ulong oldOffset = _refTableOffset, oldClusters = (oldEntries * 8 + cs - 1) / cs;
        _refTable = table;
        _refTableOffset = start * cs;
        _nextFree = runEnd;
        ClustersAllocated += (long)(runEnd - start);
        RefcountTableGrowths++;
        for (ulong c = oldOffset / cs; c < oldOffset / cs + oldClusters; c++) SetRefcount(c, 0);
    }

    /// <summary>Refcount block <paramref name="b"/> at cluster <paramref name="next"/> of the growth run [start, runEnd), written with refcount 1 for the run's clusters it covers.</summary>
    private void PlaceBlock(ulong[] table, ulong b, ref ulong next, ulong start, ulong runEnd)
    {
        ulong at = next++;
        Array.Clear(_refBlock);
        ulong from = Math.Max(start, b * _refPerBlock), to = Math.Min(runEnd, (b + 1) * _refPerBlock);
        for (ulong c = from; c < to; c++) PutRef(_refBlock.AsSpan((int)(c - b * _refPerBlock) * _refBytes, _refBytes), 1);
        WriteAt(at << Header.ClusterBits, _refBlock);
        table[b] = at << Header.ClusterBits;
    }

    /// <summary>How often the refcount table was moved to a larger one since the image was opened.</summary>
    public int RefcountTableGrowths { get; private set; }

    private static ulong RefValue(ReadOnlySpan<byte> b) => b.Length switch
    {
        1 => b[0],
        2 => BinaryPrimitives.ReadUInt16BigEndian(b),
        4 => BinaryPrimitives.ReadUInt32BigEndian(b),
        _ => BinaryPrimitives.ReadUInt64BigEndian(b),
    };

    private static void PutRef(Span<byte> b, ulong v)
    {
        switch (b.Length)
        {
            case 1: b[0] = (byte)v; break;
            case 2: BinaryPrimitives.WriteUInt16BigEndian(b, (ushort)v); break;
            case 4: BinaryPrimitives.WriteUInt32BigEndian(b, (uint)v); break;
            default: BinaryPrimitives.WriteUInt64BigEndian(b, v); break;
        }
    }

    /// <summary>Bits sc0..sc1 of an extended L2 bitmap's allocation half.</summary>
    private static ulong SubclusterMask(int sc0, int sc1) => ((sc1 == 31 ? 0xffff_ffffUL : (1UL << (sc1 + 1)) - 1)) & ~((1UL << sc0) - 1);

    private void AddFreed(Freed f)
    {
        if (_freedCount == _freed.Length) Array.Resize(ref _freed, _freed.Length * 2);
        _freed[_freedCount++] = f;
    }

    private void WriteAt(ulong offset, ReadOnlySpan<byte> data)
    {
        RandomAccess.Write(_fd, data, (long)offset);
        _fileEnd = Math.Max(_fileEnd, offset + (ulong)data.Length);
    }

    /// <summary>Makes the file at least <paramref name="length"/> bytes long; what it grows by reads as zeros.</summary>
    private void Extend(ulong length)
    {
        if (length <= _fileEnd) return;
        // Asked of the file, not only of _fileEnd: SetLength also shrinks, and a write SQE into a cluster an odd image
        // referenced past its end at open may have made the file longer than _fileEnd knows.
        _fileEnd = Math.Max(_fileEnd, (ulong)RandomAccess.GetLength(_fd));
        if (length <= _fileEnd) return;
        RandomAccess.SetLength(_fd, (long)length);
        _fileEnd = length;
    }

    /// <summary>fdatasync of the image: what was written before it is durable.</summary>
    public void Sync()
    {
        Syncs++;
        if (Libc.FDataSync(Fd) < 0) throw new Qcow2Exception("qcow2: fdatasync(" + Path + ") failed: " + Errno.Name(Errno.Last), Errno.Last);
    }
}
