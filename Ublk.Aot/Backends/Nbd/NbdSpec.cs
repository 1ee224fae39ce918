using System;
using Ublk.Aot.Abi;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Backends;

/// <summary>
/// nbd://HOST[:PORT]/EXPORT and nbd+unix:///EXPORT?socket=PATH — an NBD export. The spec probes the server once
/// (NBD_OPT_INFO, then NBD_OPT_ABORT), so a bad URI, a refused connection, an unknown export or a handshake the
/// server breaks off all fail here, in one line, before any device exists; the device's caps follow the export's
/// transmission flags and block sizes. Each queue then opens its own connection (<see cref="NbdConnection"/>).
/// </summary>
public sealed class NbdSpec(NbdUri uri, NbdExport export) : LeafSpec<NbdBackend>
{
    /// <summary>How long the probe and each queue's first connection may take.</summary>
    public static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(10);

    public static readonly BackendKind Kind = new("nbd", "nbd://HOST[:PORT]/EXPORT | nbd+unix:///EXPORT?socket=PATH",
        "an NBD export (no TLS); ?reconnect=SECONDS (default 30) rides out a server restart, then I/O fails with EIO until it is back",
        Parse, aliases: ["nbd+unix", "nbds", "nbds+unix"], wholeSpec: true);

    public NbdUri Uri { get; } = uri;
    public NbdExport Export { get; } = export;

    public override string Describe() => "nbd " + Uri.Where + (Uri.Export.Length > 0 ? " export '" + Uri.Export + "'" : " (default export)");

    protected override NbdBackend Make() => new(this);

    public override BackendCaps Caps => new()
        {
            Size = Export.Size,
            ReadOnly = Export.ReadOnly,
            VolatileCache = Export.Flush,
            NoFua = !Export.Fua,
            Discard = Export.Trim,
            WriteZeroes = Export.WriteZeroes,
            Rotational = Export.Rotational,
            DiscardGranularity = Math.Max(512, Export.MinBlock),
            MinBlockSize = Math.Max(512, Export.MinBlock),
            MaxIoBytes = Export.MaxPayload,
            MaxQueues = Export.MultiConn ? 0 : 1,
            MaxQueuesWhy = Export.MultiConn ? null : "one connection per queue, and the export does not offer NBD_FLAG_CAN_MULTI_CONN",
            // The data lives with the server: a recovered device finds it there (DataDiesWithServer stays false).
        };

    private static BackendSpec Parse(SpecReader r, string spec, SpecContext context)
    {
        NbdUri uri = NbdUri.Parse(spec);
        NbdExport export = NbdHandshake.Probe(uri, ConnectTimeout);
        string at = "nbd: " + uri.Where + ": ";
        if (export.MinBlock > 4096)
            throw new SpecException(at + "the export's minimum block size " + export.MinBlock + " is larger than 4096, the largest ublk block size");
        if (export.Size == 0) throw new SpecException(at + "the export is empty (0 bytes)");
        return new NbdSpec(uri, export);
    }
}

/// <summary>The per-queue struct: each queue's own <see cref="NbdConnection"/>, made on its thread in Attach.</summary>
public struct NbdBackend(NbdSpec spec) : IBackend
{
    private readonly NbdSpec _spec = spec;
    private NbdConnection? _conn;

    public void Attach(UblkQueue queue) => _conn = new NbdConnection(_spec.Uri, _spec.Export, queue);

    public int Submit(UblkQueue queue, ushort tag, in ublksrv_io_desc iod) => _conn!.Submit(tag, in iod);

    public int Complete(UblkQueue queue, ushort tag, byte subOp, int res)
    {
        _conn!.OnCqe(subOp, res);
        return Backend.Pending;
    }

    public void Detach(UblkQueue queue)
    {
        _conn?.Dispose();
        _conn = null;
    }
}
