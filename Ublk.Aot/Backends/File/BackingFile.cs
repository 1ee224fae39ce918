using System;
using System.Threading;
using Ublk.Aot.Interop;

namespace Ublk.Aot.Backends;

/// <summary>The open backing file (or block device) shared by all queues of a file: device.</summary>
public sealed unsafe class BackingFile : IDisposable
{
    public string Path { get; }
    // The device's size in bytes: read by every queue per I/O (bounds check), changed only by a resize (control thread).
    private ulong _size;
    public ulong Size { get => Volatile.Read(ref _size); private set => Volatile.Write(ref _size, value); }
    private readonly bool _readOnly;
    public bool IsBlockDevice { get; }
    /// <summary>True when <see cref="DirectFd"/> was opened with O_DIRECT.</summary>
    public bool Direct { get; }
    /// <summary>Logical block size of a block device (O_DIRECT alignment), else 512.</summary>
    public uint LogicalBlockSize { get; }
    public int DirectFd { get; private set; } = -1;
    public int BufferedFd { get; private set; } = -1;

    /// <summary>Opens (and with <paramref name="size"/> creates or extends) the backing file. Throws SpecException with a one-line reason.</summary>
    public BackingFile(string path, ulong? size, bool readOnly, bool? direct)
    {
        Path = path;
        _readOnly = readOnly;
        int mode = readOnly ? Libc.O_RDONLY : Libc.O_RDWR;
        bool exists = System.IO.File.Exists(path) || System.IO.Directory.Exists(path);
        if (!exists && size is null) throw new SpecException("backing file not found: " + path + " (add ,size=SIZE to create it)", Errno.ENOENT);
        if (!exists && readOnly) throw new SpecException("backing file not found: " + path, Errno.ENOENT);
        int flags = mode | Libc.O_CLOEXEC | (exists ? 0 : Libc.O_CREAT | Libc.O_EXCL);
        BufferedFd = Libc.Open(path, flags, 0x1a4 /* 0644 */);
        if (BufferedFd < 0)
        {
            int e = Errno.Last;
            throw new SpecException("cannot open backing file " + path + ": " + Errno.Name(e) +
                (e == Errno.EACCES || e == Errno.EPERM ? " (permission denied)" : e == Errno.ENOENT ? " (no such file)" : ""), e);
        }
        try
        {
            Libc.StatBuf st;
            SysException.Check(Libc.FStat(BufferedFd, &st), "fstat(" + path + ")");
            uint type = st.st_mode & Libc.S_IFMT;
            if (type == Libc.S_IFBLK)
            {
                IsBlockDevice = true;
                ulong bytes;
                SysException.Check(Libc.Ioctl(BufferedFd, Libc.BLKGETSIZE64, &bytes), "ioctl(BLKGETSIZE64, " + path + ")");
                int lbs;
                SysException.Check(Libc.Ioctl(BufferedFd, Libc.BLKSSZGET, &lbs), "ioctl(BLKSSZGET, " + path + ")");
                LogicalBlockSize = (uint)lbs;
                if (size is { } want && want > bytes) throw new SpecException("size " + want + " is larger than block device " + path + " (" + bytes + " bytes)", Errno.EINVAL);
                Size = size ?? bytes;
            }
            else if (type == Libc.S_IFREG)
            {
                LogicalBlockSize = 512;
                ulong cur = (ulong)st.st_size;
                if (size is { } want)
                {
                    if (want > cur)
                    {
                        if (readOnly) throw new SpecException("cannot extend read-only backing file " + path, Errno.EROFS);
                        SysException.Check(Libc.FTruncate(BufferedFd, (long)want), "ftruncate(" + path + ")");
                    }
                    Size = want;
                }
                else Size = cur;
            }
            else throw new SpecException("backing file " + path + " is not a regular file or block device", Errno.EINVAL);

            DirectFd = BufferedFd;
            if (direct != false)
            {
                int fd = Libc.Open(path, mode | Libc.O_CLOEXEC | Libc.O_DIRECT, 0);
                if (fd >= 0) { DirectFd = fd; Direct = true; }
                else if (direct == true) throw new SpecException("cannot open " + path + " with O_DIRECT: " + Errno.Name(Errno.Last), Errno.Last);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>The file's own length (st_size; a block device's size).</summary>
    private ulong CurrentLength()
    {
        if (IsBlockDevice)
        {
            ulong bytes;
            SysException.Check(Libc.Ioctl(BufferedFd, Libc.BLKGETSIZE64, &bytes), "ioctl(BLKGETSIZE64, " + Path + ")");
            return bytes;
        }
        Libc.StatBuf st;
        SysException.Check(Libc.FStat(BufferedFd, &st), "fstat(" + Path + ")");
        return (ulong)st.st_size;
    }

    /// <summary>
    /// Why the device cannot become <paramref name="newSize"/> bytes, or null. A block device cannot grow beyond
    /// itself; a regular file cannot shrink below data it holds inside the device's range (SEEK_DATA from the new end).
    /// </summary>
    public string? CheckResize(ulong newSize)
    {
        ulong old = Size, len = CurrentLength();
        if (IsBlockDevice)
            return newSize > len ? "block device " + Path + " has " + len + " bytes: it cannot back " + newSize : null;
        if (_readOnly && newSize > len) return "backing file " + Path + " is opened read-only: it cannot grow to " + newSize + " bytes";
        if (_readOnly && newSize < old && len == old) return "backing file " + Path + " is opened read-only: it cannot be truncated";
        if (newSize < old)
        {
            long data = Libc.LSeek(BufferedFd, (long)newSize, Libc.SEEK_DATA);
            if (data < 0 && Errno.Last != Errno.ENXIO) return "lseek(SEEK_DATA) on " + Path + " failed: " + Errno.Name(Errno.Last);
            if (data >= 0 && (ulong)data < old)
                return "backing file " + Path + " holds data at offset " + data + ", beyond the new size " + newSize + " (discard it first, e.g. blkdiscard -o " + newSize + ")";
        }
        return null;
    }

    /// <summary>
    /// Growth, before the kernel learns the new size: extends the file (sparse) if it is shorter, then the bounds.
    /// Returns the file's previous length, for <see cref="UndoGrow"/>.
    /// </summary>
    public ulong Grow(ulong newSize)
    {
        ulong len = CurrentLength();
        if (!IsBlockDevice && newSize > len) SysException.Check(Libc.FTruncate(BufferedFd, (long)newSize), "ftruncate(" + Path + ")");
        Size = newSize;
        return len;
    }

    /// <summary>Takes back a <see cref="Grow"/> the kernel refused: the old bounds and file length.</summary>
    public void UndoGrow(ulong oldSize, ulong oldLength)
    {
        Size = oldSize;
        if (!IsBlockDevice && CurrentLength() > oldLength) Libc.FTruncate(BufferedFd, (long)oldLength);
    }

    /// <summary>
    /// Shrink, after the kernel has the new size: the bounds, then the file is truncated if it was exactly the
    /// device (a file longer than the device, size=, keeps what lies beyond; a block device is never touched).
    /// </summary>
    public void Shrink(ulong newSize)
    {
        ulong old = Size;
        Size = newSize;
        if (!IsBlockDevice && CurrentLength() == old) SysException.Check(Libc.FTruncate(BufferedFd, (long)newSize), "ftruncate(" + Path + ")");
    }

    public void Dispose()
    {
        if (DirectFd >= 0 && DirectFd != BufferedFd) Libc.Close(DirectFd);
        if (BufferedFd >= 0) Libc.Close(BufferedFd);
        DirectFd = BufferedFd = -1;
    }
}
