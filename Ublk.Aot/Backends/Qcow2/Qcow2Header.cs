using System;
using System.Buffers.Binary;
using System.Text;

namespace Ublk.Aot.Backends;

/// <summary>
/// A qcow2 image's header and header extensions, checked (qemu's docs/interop/qcow2.txt, "Header" and "Header
/// extensions"). Big-endian throughout. Every check that fails is one line naming the image and the rule.
/// </summary>
public sealed class Qcow2Header
{
    public const uint Magic = 0x514649fb; // "QFI\xfb"
    public const int V2Length = 72, V3MinLength = 104;

    // Incompatible feature bits ("Bit 0: Dirty bit" ... "Bit 4: Extended L2 Entries").
    public const ulong IncompatDirty = 1, IncompatCorrupt = 2, IncompatExternalData = 4, IncompatCompression = 8, IncompatExtendedL2 = 16;
    public const ulong IncompatKnown = IncompatDirty | IncompatCorrupt | IncompatExternalData | IncompatCompression | IncompatExtendedL2;
    public const ulong CompatLazyRefcounts = 1;

    // Header extension types.
    private const uint ExtEnd = 0, ExtBackingFormat = 0xe2792aca, ExtFeatureNames = 0x6803f857, ExtExternalData = 0x44415441;

    public uint Version { get; private init; }
    public int ClusterBits { get; private init; }
    public int ClusterSize => 1 << ClusterBits;
    public ulong Size { get; private init; }
    public uint L1Size { get; private init; }
    public ulong L1TableOffset { get; private init; }
    public ulong RefcountTableOffset { get; private init; }
    public uint RefcountTableClusters { get; private init; }
    public uint Snapshots { get; private init; }
    public ulong Incompatible { get; private init; }
    public ulong Compatible { get; private init; }
    public ulong Autoclear { get; private init; }
    public int RefcountOrder { get; private init; }
    public uint HeaderLength { get; private init; }
    public string? BackingFile { get; private init; }
    /// <summary>From the backing format extension ("raw", "qcow2"), or null: probe the backing file.</summary>
    public string? BackingFormat { get; private init; }

    public bool ExtendedL2 => (Incompatible & IncompatExtendedL2) != 0;
    public bool Dirty => (Incompatible & IncompatDirty) != 0;
    public bool Corrupt => (Incompatible & IncompatCorrupt) != 0;
    public bool LazyRefcounts => (Compatible & CompatLazyRefcounts) != 0;
    /// <summary>Bytes per L2 entry: 8, or 16 with extended L2 (the second word is the subcluster bitmap).</summary>
    public int L2EntrySize => ExtendedL2 ? 16 : 8;
    /// <summary>L2 entries in one L2 table (one cluster).</summary>
    public int L2Entries => ClusterSize / L2EntrySize;

    /// <summary>
    /// Parses the header from the image's first bytes (<paramref name="head"/>: at least the first cluster, or the
    /// whole file if shorter). <paramref name="name"/> is the image's path, for the messages.
    /// </summary>
    public static Qcow2Header Parse(ReadOnlySpan<byte> head, ulong fileLength, string name)
    {
        string at = "qcow2: " + name + ": ";
        if (head.Length < V2Length || BinaryPrimitives.ReadUInt32BigEndian(head) != Magic)
            throw new SpecException(at + "not a qcow2 image (no QFI\\xfb magic)");
        uint version = U32(head, 4);
        if (version is not (2 or 3)) throw new SpecException(at + "qcow2 version " + version + " is not supported (2 and 3 are)");
        int clusterBits = (int)U32(head, 20);
        // qemu itself opens cluster sizes of 512 bytes to 2 MiB.
        if (clusterBits is < 9 or > 21) throw new SpecException(at + "corrupt header: cluster_bits " + clusterBits + " is outside 9..21");
        int cluster = 1 << clusterBits;
        if ((ulong)head.Length < Math.Min((ulong)cluster, fileLength)) throw new ArgumentException("the first cluster is needed", nameof(head));
        ReadOnlySpan<byte> first = head[..(int)Math.Min((ulong)head.Length, (ulong)cluster)];

        uint crypt = U32(first, 32);
        if (crypt != 0) throw new SpecException(at + "the image is encrypted (crypt_method " + crypt + "); encrypted images are not supported");

        ulong incompat = 0, compat = 0, autoclear = 0;
        int refcountOrder = 4;
        uint headerLength = V2Length;
        if (version == 3)
        {
            if (first.Length < V3MinLength) throw new SpecException(at + "corrupt header: a version 3 header shorter than 104 bytes");
            incompat = U64(first, 72);
            compat = U64(first, 80);
            autoclear = U64(first, 88);
            refcountOrder = (int)U32(first, 96);
            headerLength = U32(first, 100);
            if (headerLength < V3MinLength || headerLength % 8 != 0 || headerLength > first.Length)
                throw new SpecException(at + "corrupt header: header_length " + headerLength + " (at least 104, a multiple of 8, inside the first cluster)");
            if (refcountOrder > 6) throw new SpecException(at + "corrupt header: refcount_order " + refcountOrder + " (at most 6)");
        }

        // Extensions: feature names first, so that a refusal of an unknown bit can name it.
        string? backingFormat = null;
        bool externalData = false;
        byte[]? featureNames = null;
        int pos = (int)headerLength;
        while (pos + 8 <= first.Length)
        {
            uint type = U32(first, pos);
            uint len = U32(first, pos + 4);
            if (type == ExtEnd) break;
            if (len > first.Length - pos - 8) throw new SpecException(at + "corrupt header: extension 0x" + type.ToString("x8", Inv) + " overruns the first cluster");
            ReadOnlySpan<byte> data = first.Slice(pos + 8, (int)len);
            switch (type)
            {
                case ExtBackingFormat: backingFormat = Encoding.UTF8.GetString(data).TrimEnd('\0'); break;
                case ExtFeatureNames: featureNames = data.ToArray(); break;
                case ExtExternalData: externalData = true; break;
                // Others (bitmaps, full disk encryption, unknown ones) are skipped, as the specification allows.
            }
            pos += 8 + (int)((len + 7) & ~7u);
        }

        ulong unknown = incompat & ~IncompatKnown;
        if (unknown != 0) throw new SpecException(at + "the image uses incompatible features this server does not know: " + FeatureList(unknown, featureNames));
        if ((incompat & IncompatExternalData) != 0 || externalData)
            throw new SpecException(at + "the image keeps its data in an external data file, which is not supported");
        if ((incompat & IncompatCompression) != 0)
        {
            byte type = headerLength > 104 ? first[104] : (byte)0;
            if (type != 0) throw new SpecException(at + "compression type " + (type == 1 ? "zstd" : type.ToString(Inv)) + " is not supported (zlib is)");
        }
        if ((incompat & IncompatExtendedL2) != 0 && clusterBits < 14)
            throw new SpecException(at + "corrupt header: extended L2 entries need clusters of at least 16 KiB");

        ulong size = U64(first, 24);
        uint l1Size = U32(first, 36);
        ulong l1Offset = U64(first, 40);
        int l2Entries = cluster / ((incompat & IncompatExtendedL2) != 0 ? 16 : 8);
        ulong bytesPerL1 = (ulong)l2Entries << clusterBits;
        if (size > (1UL << 62)) throw new SpecException(at + "corrupt header: virtual size " + size + " is too large");
        if ((ulong)l1Size * bytesPerL1 < size) throw new SpecException(at + "corrupt header: the L1 table (" + l1Size + " entries) does not cover the virtual size " + size);
        if (l1Size > 0 && (l1Offset % (ulong)cluster != 0 || l1Offset == 0))
            throw new SpecException(at + "corrupt header: the L1 table offset 0x" + l1Offset.ToString("x", Inv) + " is not a cluster boundary");
        ulong rtOffset = U64(first, 48);
        if (rtOffset % (ulong)cluster != 0 || rtOffset == 0)
            throw new SpecException(at + "corrupt header: the refcount table offset 0x" + rtOffset.ToString("x", Inv) + " is not a cluster boundary");

        string? backing = null;
        ulong bOffset = U64(first, 8);
        uint bSize = U32(first, 16);
        if (bOffset != 0)
        {
            if (bSize == 0 || bSize > 1023 || bOffset > (ulong)first.Length || bSize > (ulong)first.Length - bOffset)
                throw new SpecException(at + "corrupt header: the backing file name (" + bSize + " bytes at " + bOffset + ") is not inside the first cluster");
            backing = Encoding.UTF8.GetString(first.Slice((int)bOffset, (int)bSize));
        }

        return new Qcow2Header
        {
            Version = version,
            ClusterBits = clusterBits,
            Size = size,
            L1Size = l1Size,
            L1TableOffset = l1Offset,
            RefcountTableOffset = rtOffset,
            RefcountTableClusters = U32(first, 56),
            Snapshots = U32(first, 60),
            Incompatible = incompat,
            Compatible = compat,
            Autoclear = autoclear,
            RefcountOrder = refcountOrder,
            HeaderLength = headerLength,
            BackingFile = backing,
            BackingFormat = backingFormat,
        };
    }

    /// <summary>"bit 5, bit 9 (name)": the feature name table has 48-byte rows of type, bit number and a 46-byte name.</summary>
    private static string FeatureList(ulong bits, byte[]? names)
    {
        var sb = new StringBuilder();
        for (int b = 0; b < 64; b++)
        {
            if ((bits & (1UL << b)) == 0) continue;
            if (sb.Length > 0) sb.Append(", ");
            sb.Append("bit ").Append(b);
            for (int i = 0; names != null && i + 48 <= names.Length; i += 48)
                if (names[i] == 0 && names[i + 1] == b)
                {
                    string n = Encoding.UTF8.GetString(names, i + 2, 46).TrimEnd('\0');
                    if (n.Length > 0) sb.Append(" (").Append(n).Append(')');
                }
        }
        return sb.ToString();
    }

    private static readonly IFormatProvider Inv = System.Globalization.CultureInfo.InvariantCulture;
    private static uint U32(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt32BigEndian(b[at..]);
    private static ulong U64(ReadOnlySpan<byte> b, int at) => BinaryPrimitives.ReadUInt64BigEndian(b[at..]);
}
