using System;
using Ublk.Aot.Interop;

namespace Ublk.Aot.Backends;

/// <summary>The open backing file (or block device) shared by all queues of a file: device.</summary>
public sealed unsafe class BackingFile : IDisposable
{
    public string Path { get; }
    public ulong Size { get; }
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

    public void Dispose()
    {
        if (DirectFd >= 0 && DirectFd != BufferedFd) Libc.Close(DirectFd);
        if (BufferedFd >= 0) Libc.Close(BufferedFd);
        DirectFd = BufferedFd = -1;
    }
}
