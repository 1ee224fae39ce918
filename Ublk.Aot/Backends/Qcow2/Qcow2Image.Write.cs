using System;
using System.Buffers.Binary;
using System.IO;
using Ublk.Aot.Interop;

namespace Ublk.Aot.Backends;

/// <summary>A qcow2 I/O or consistency failure while serving: the request fails with <see cref="UblkAotException.Errno"/>.</summary>
public sealed class Qcow2Exception(string message, int errno = Errno.EIO) : UblkAotException(message, errno);

/// <summary>
/// The write side of <see cref="Qcow2Image"/>: cluster allocation, copy-on-write, refcounts, discard and zeroing,
/// ordered so that a crash at any instant leaves at worst leaked clusters (docs/qcow2-design.md, "Crash safety"):
/// <list type="number">
/// <item>a new cluster's refcount (and a new refcount block, made durable before the table entry that points at it),
/// its data (the whole cluster, the old contents copied in around a partial write) and a new L2 table (zeros) are
/// written; then one fdatasync;</item>
/// <item>the L1 entries of new tables and the L2 entries, each one aligned write of 8 (16: extended L2) bytes
/// inside one sector;</item>
/// <item>only if an entry stopped pointing at a cluster (copy-on-write of a compressed or shared cluster, discard):
/// fdatasync, then the old cluster's refcount drops.</item>
/// </list>
/// A write into a cluster the image already owns (COPIED, and for extended L2 every touched subcluster allocated)
/// touches no metadata at all. Free clusters are never reused within one open image: a cluster read by a request
/// still in flight cannot become another one's data. Clusters are taken from the end of the file (the first one
/// whose refcount is 0), so the image grows as it fills.
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

    // What one Write/Zero call does after its fdatasync. Grown once to the largest call, then reused.
    private Pending[] _pending = new Pending[8];
    private int _pendingCount;
    private Freed[] _freed = new Freed[8];
    private int _freedCount;

    private struct Pending
    {
        public ulong L1Index; // with NewTable: the L1 entry to point at Table
        public bool NewTable;
        public ulong Table;
        public int L2Index;
        public ulong Entry, Bitmap;
    }

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
        _pendingCount = _freedCount = 0;
        long before = ClustersAllocated;
        int cs = Header.ClusterSize;
        while (data.Length > 0)
        {
            int inCluster = (int)(offset & (ulong)(cs - 1));
            int n = Math.Min(cs - inCluster, data.Length);
            WriteCluster(offset - (ulong)inCluster, inCluster, data[..n]);
            offset += (ulong)n;
            data = data[n..];
        }
        Commit(ClustersAllocated != before, fua);
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
        _pendingCount = _freedCount = 0;
        long before = ClustersAllocated;
        for (ulong c = first; c < last; c += cs) ZeroCluster(c, keepAllocated && !discard);
        Commit(ClustersAllocated != before, fua);
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

    /// <summary>Makes the current durable: see the class summary for the order.</summary>
    private void Commit(bool allocated, bool fua)
    {
        if (allocated) Sync();
        Span<byte> e = stackalloc byte[8];
        for (int i = 0; i < _pendingCount; i++)
        {
            ref Pending p = ref _pending[i];
            if (p.NewTable)
            {
                BinaryPrimitives.WriteUInt64BigEndian(e, p.Table | Copied);
                WriteAt(Header.L1TableOffset + p.L1Index * 8, e);
                _l1[p.L1Index] = p.Table | Copied;
                continue;
            }
            SetL2(p.Table, p.L2Index, p.Entry, p.Bitmap);
        }
        if (_freedCount > 0)
        {
            Sync();
            for (int i = 0; i < _freedCount; i++) Unreference(_freed[i]);
        }
        if (fua) Sync();
        _pendingCount = _freedCount = 0;
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
        AddPending(new Pending { Table = table, L2Index = l2Index, Entry = target | Copied, Bitmap = h.ExtendedL2 ? AllAllocated : 0 });
        if (compressed) AddFreed(new Freed(CompressedHost(entry), CompressedLength(entry)));
        else if (host != 0 && !owned) AddFreed(new Freed(host, 0));
    }

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
        AddPending(new Pending { Table = table, L2Index = l2Index, Entry = newEntry, Bitmap = newBitmap });
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
        ulong table = TableFor(l1Index, out bool pendingTable);
        entry = bitmap = 0;
        if (table != 0 && !pendingTable)
        {
            ulong[] t = L2(table);
            entry = t[h.ExtendedL2 ? 2 * l2Index : l2Index];
            if (h.ExtendedL2) bitmap = t[2 * l2Index + 1];
        }
        return table;
    }

    /// <summary>The L2 table of <paramref name="l1Index"/>: the L1 entry's, or one this call allocated (<paramref name="pending"/>), or 0.</summary>
    private ulong TableFor(ulong l1Index, out bool pending)
    {
        pending = false;
        if (l1Index >= (ulong)_l1.Length) throw Corrupt("guest offset beyond the L1 table");
        ulong l1 = _l1[l1Index];
        if (l1 != 0)
        {
            // Without internal snapshots (refused for writing) every L2 table has refcount 1.
            if ((l1 & Copied) == 0) throw Corrupt("L1 entry " + l1Index + " is shared but the image has no snapshots");
            return l1 & OffsetMask;
        }
        for (int i = 0; i < _pendingCount; i++)
            if (_pending[i].NewTable && _pending[i].L1Index == l1Index)
            {
                pending = true;
                return _pending[i].Table;
            }
        return 0;
    }

    /// <summary>A new L2 table for <paramref name="l1Index"/>: allocated, written as zeros, and in the cache; its L1 entry is pending.</summary>
    private ulong NewTable(ulong l1Index)
    {
        ulong table = AllocateCluster();
        WriteAt(table, _zeros);
        // Into the cache now, as zeros, so that this call's L2 entries land in it (Commit writes them through).
        Array.Clear(_cacheTables[_cacheIndex.TryGetValue(table, out int s) ? s : CacheSlotFor(table)]);
        AddPending(new Pending { L1Index = l1Index, NewTable = true, Table = table });
        return table;
    }

    /// <summary>Writes an L2 entry through: the cache, then the file (one aligned 8- or 16-byte write).</summary>
    private void SetL2(ulong table, int l2Index, ulong entry, ulong bitmap)
    {
        ulong[] t = L2(table);
        Span<byte> e = stackalloc byte[16];
        BinaryPrimitives.WriteUInt64BigEndian(e, entry);
        if (Header.ExtendedL2)
        {
            t[2 * l2Index] = entry;
            t[2 * l2Index + 1] = bitmap;
            BinaryPrimitives.WriteUInt64BigEndian(e[8..], bitmap);
            WriteAt(table + (ulong)l2Index * 16, e);
        }
        else
        {
            t[l2Index] = entry;
            WriteAt(table + (ulong)l2Index * 8, e[..8]);
        }
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

    private void AddPending(in Pending p)
    {
        if (_pendingCount == _pending.Length) Array.Resize(ref _pending, _pending.Length * 2);
        _pending[_pendingCount++] = p;
    }

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
        RandomAccess.SetLength(_fd, (long)length);
        _fileEnd = length;
    }

    /// <summary>fdatasync of the image: what was written before it is durable.</summary>
    public void Sync()
    {
        if (Libc.FDataSync(Fd) < 0) throw new Qcow2Exception("qcow2: fdatasync(" + Path + ") failed: " + Errno.Name(Errno.Last), Errno.Last);
    }
}
