using Ublk.Aot.Ublk;

namespace Ublk.Aot.Backends;

/// <summary>file:PATH[,size=SIZE][,direct=on|off|auto] — a regular file or a block device.</summary>
public sealed class FileSpec(BackingFile file) : LeafSpec<FileBackend>
{
    public static readonly BackendKind Kind = new("file", "file:PATH[,size=SIZE][,direct=on|off|auto]",
        "a regular file or block device through the queue's io_uring, O_DIRECT when possible; size= creates or extends (sparse)",
        Parse);

    public BackingFile File { get; } = file;
    public override string Describe() => "file:" + File.Path + " (" + File.Size + " bytes" + (File.Direct ? ", O_DIRECT" : ", buffered") + ")";

    protected override FileBackend Make() => new(File);
    protected override int[] Files => FileBackend.Files(File);

    public override BackendCaps Caps => new()
        {
            Size = File.Size,
            Discard = true,
            WriteZeroes = true,
            VolatileCache = true,
            DiscardGranularity = 4096,
            MinBlockSize = File.IsBlockDevice && File.Direct ? File.LogicalBlockSize : 512,
            // Zero copy first: file I/O straight on the request's pages. User copy last: file I/O needs user memory,
            // so it bounces through the tag buffer with one more SQE per request than copy.
            IoModes = [IoMode.AutoBufReg, IoMode.ZeroCopy, IoMode.Copy, IoMode.UserCopy],
            UserCopyBounce = true,
        };

    public override string? CheckResize(ulong newSize) => File.CheckResize(newSize);

    public override System.Action GrowTo(ulong newSize)
    {
        ulong oldSize = File.Size;
        ulong oldLength = File.Grow(newSize);
        return () => File.UndoGrow(oldSize, oldLength);
    }

    public override void ShrinkTo(ulong newSize) => File.Shrink(newSize);

    /// <summary>A size= in the SPEC becomes the new size; without one the file's own length (now the new size) is what counts.</summary>
    public override string Respec(string text, ulong newSize)
    {
        string[] parts = text.Split(',');
        for (int i = 1; i < parts.Length; i++)
            if (parts[i].StartsWith("size=", System.StringComparison.Ordinal)) parts[i] = "size=" + newSize;
        return string.Join(',', parts);
    }

    public override void Dispose() => File.Dispose();

    private static BackendSpec Parse(SpecReader r, string rest, SpecContext context)
    {
        string[] parts = rest.Split(',');
        string path = parts[0];
        if (path.Length == 0) throw r.Error("needs a path, e.g. file:/data/disk.img");
        ulong? size = null;
        bool? direct = null;
        for (int i = 1; i < parts.Length; i++)
        {
            (string k, string v) = r.KeyValue(parts[i]);
            switch (k)
            {
                case "size":
                    size = r.Size(v, "file size");
                    if (size == 0) throw r.Error("size must be greater than 0");
                    break;
                case "direct":
                    direct = v switch
                    {
                        "on" => true,
                        "off" => false,
                        "auto" => null,
                        _ => throw r.Error("direct must be on, off or auto"),
                    };
                    break;
                default:
                    throw r.Error("unknown option '" + k + "' (size=, direct=)");
            }
        }
        var file = new BackingFile(path, size, context.ReadOnly, direct);
        if (file.Size == 0)
        {
            file.Dispose();
            throw new SpecException("backing file " + path + " is empty: give a size with file:" + path + ",size=SIZE");
        }
        return new FileSpec(file);
    }
}
