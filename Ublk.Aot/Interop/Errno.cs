using System;
using System.Runtime.InteropServices;

namespace Ublk.Aot.Interop;

/// <summary>errno values used on the data path, and their names for messages.</summary>
public static class Errno
{
    public const int EPERM = 1;
    public const int ENOENT = 2;
    public const int ESRCH = 3;
    public const int EINTR = 4;
    public const int EIO = 5;
    public const int ENXIO = 6;
    public const int EBADF = 9;
    public const int EAGAIN = 11;
    public const int ENOMEM = 12;
    public const int EACCES = 13;
    public const int EFAULT = 14;
    public const int EBUSY = 16;
    public const int EEXIST = 17;
    public const int ENODEV = 19;
    public const int ENOTDIR = 20;
    public const int EISDIR = 21;
    public const int EINVAL = 22;
    public const int EMFILE = 24;
    public const int ENOTTY = 25;
    public const int EFBIG = 27;
    public const int ENOSPC = 28;
    public const int EROFS = 30;
    public const int ENOSYS = 38;
    public const int EOPNOTSUPP = 95;
    public const int ETIME = 62;
    public const int ETIMEDOUT = 110;
    public const int ECONNREFUSED = 111;
    public const int EPIPE = 32;
    public const int ENETUNREACH = 101;
    public const int ECONNRESET = 104;
    public const int ESHUTDOWN = 108;
    public const int EHOSTUNREACH = 113;
    public const int EINPROGRESS = 115;
    public const int ECANCELED = 125;
    public const int EADDRINUSE = 98;
    public const int EADDRNOTAVAIL = 99;

    /// <summary>errno of the last libc call made with SetLastError.</summary>
    public static int Last => Marshal.GetLastPInvokeError();

    public static string Name(int errno)
    {
        if (errno == int.MinValue) return "errno " + errno.ToString(System.Globalization.CultureInfo.InvariantCulture);
        errno = Math.Abs(errno);
        return errno switch
        {
            EPERM => "EPERM",
            ENOENT => "ENOENT",
            ESRCH => "ESRCH",
            EINTR => "EINTR",
            EIO => "EIO",
            ENXIO => "ENXIO",
            EBADF => "EBADF",
            EAGAIN => "EAGAIN",
            ENOMEM => "ENOMEM",
            EACCES => "EACCES",
            EFAULT => "EFAULT",
            EBUSY => "EBUSY",
            EEXIST => "EEXIST",
            ENODEV => "ENODEV",
            ENOTDIR => "ENOTDIR",
            EISDIR => "EISDIR",
            EINVAL => "EINVAL",
            EMFILE => "EMFILE",
            ENOTTY => "ENOTTY",
            EFBIG => "EFBIG",
            ENOSPC => "ENOSPC",
            EROFS => "EROFS",
            ENOSYS => "ENOSYS",
            EOPNOTSUPP => "EOPNOTSUPP",
            ETIME => "ETIME",
            ETIMEDOUT => "ETIMEDOUT",
            ECONNREFUSED => "ECONNREFUSED",
            EPIPE => "EPIPE",
            ENETUNREACH => "ENETUNREACH",
            ECONNRESET => "ECONNRESET",
            ESHUTDOWN => "ESHUTDOWN",
            EHOSTUNREACH => "EHOSTUNREACH",
            EINPROGRESS => "EINPROGRESS",
            ECANCELED => "ECANCELED",
            EADDRINUSE => "EADDRINUSE",
            EADDRNOTAVAIL => "EADDRNOTAVAIL",
            _ => "errno " + errno.ToString(System.Globalization.CultureInfo.InvariantCulture),
        };
    }
}

/// <summary>A failed system call on the setup or control path: names the operation and the errno.</summary>
public sealed class SysException(string operation, int errno)
    : UblkAotException(operation + ": " + Interop.Errno.Name(errno) + " (" + Marshal.GetPInvokeErrorMessage(Math.Abs(errno)) + ")", errno)
{
    /// <summary>Throws with the current errno if <paramref name="rc"/> is negative.</summary>
    public static long Check(long rc, string operation)
    {
        if (rc < 0) throw new SysException(operation, Interop.Errno.Last);
        return rc;
    }
}
