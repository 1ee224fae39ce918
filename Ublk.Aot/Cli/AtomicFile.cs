using System;
using System.Globalization;
using System.IO;
using Ublk.Aot.Interop;

namespace Ublk.Aot.Cli;

/// <summary>
/// A file replaced whole or not at all: the bytes go to a temporary file beside it (same directory, so the rename
/// cannot cross filesystems), are flushed to disk, get their mode, and are renamed over the path. A reader (udev,
/// `recover`, a running server's exec) sees the old file or the new one, never half of one.
/// </summary>
public static class AtomicFile
{
    /// <summary>Writes <paramref name="bytes"/> to <paramref name="path"/>, creating its directory; <paramref name="mode"/> null keeps the umask's.</summary>
    public static void Write(string path, ReadOnlySpan<byte> bytes, uint? mode = null)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        string tmp = path + ".tmp." + Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            fs.Write(bytes);
            fs.Flush(flushToDisk: true);
        }
        if (mode is { } m && Libc.Chmod(tmp, m) != 0) throw new IOException("chmod " + tmp + ": " + Errno.Name(Errno.Last));
        File.Move(tmp, path, overwrite: true);
    }
}
