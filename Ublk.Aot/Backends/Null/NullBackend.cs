using Ublk.Aot.Abi;
using Ublk.Aot.Ublk;

namespace Ublk.Aot.Backends;

/// <summary>null:SIZE — completes every request at once without touching data: the ceiling of the stack.</summary>
public struct NullBackend : IBackend
{
    public void Attach(UblkQueue queue) { }

    public int Submit(UblkQueue queue, ushort tag, in ublksrv_io_desc iod)
        => iod.Op is UblkConst.UBLK_IO_OP_READ or UblkConst.UBLK_IO_OP_WRITE ? (int)(iod.nr_sectors << 9) : 0;

    public int Complete(UblkQueue queue, ushort tag, byte subOp, int res) => res;

    public void Detach(UblkQueue queue) { }
}

public sealed class NullSpec(ulong size) : LeafSpec<NullBackend>
{
    public static readonly BackendKind Kind = new("null", "null:SIZE",
        "completes every request at once, keeps no data (the stack's ceiling)",
        (r, rest, _) => new NullSpec(r.PositiveSize(rest, "null size")));

    public ulong Size { get; private set; } = size;
    public override string Describe() => "null:" + Size;

    public override string? CheckResize(ulong newSize) => null;
    public override System.Action GrowTo(ulong newSize)
    {
        ulong old = Size;
        Size = newSize;
        return () => Size = old;
    }
    public override void ShrinkTo(ulong newSize) => Size = newSize;
    public override string Respec(string text, ulong newSize) => "null:" + newSize;
    // No data moves in any mode; user copy leaves even the kernel's copy out, so auto takes it where there is one.
    public override BackendCaps Caps => new()
    {
        Size = Size, Discard = true, WriteZeroes = true,
        IoModes = [IoMode.UserCopy, IoMode.Copy, IoMode.ZeroCopy, IoMode.AutoBufReg],
    };
    protected override NullBackend Make() => new();
}
