using System;
using System.Runtime.InteropServices;

namespace Ublk.Aot.Interop;

/// <summary>
/// The libc entry points Ublk.Aot uses, and nothing else. Bound at link time against libc.a
/// (DirectPInvoke in the csproj), so a misspelt entry point is a link error, not a run-time one.
/// Every call that can fail sets errno; callers read it with <see cref="Errno.Last"/>.
/// </summary>
internal static unsafe partial class Libc
{
    private const string Lib = "libc";

    // open(2) flags and friends (x86-64 values, asm-generic/fcntl.h).
    public const int O_RDONLY = 0x0000;
    public const int O_WRONLY = 0x0001;
    public const int O_RDWR = 0x0002;
    public const int O_CREAT = 0x0040;
    public const int O_EXCL = 0x0080;
    public const int O_NONBLOCK = 0x0800;
    public const int O_DIRECT = 0x4000;
    public const int O_CLOEXEC = 0x80000;

    public const int PROT_READ = 0x1;
    public const int PROT_WRITE = 0x2;
    public const int MAP_SHARED = 0x01;
    public const int MAP_PRIVATE = 0x02;
    public const int MAP_ANONYMOUS = 0x20;
    public const int MAP_NORESERVE = 0x4000;
    public const int MAP_POPULATE = 0x8000;
    public static readonly nint MAP_FAILED = -1;

    public const int MADV_DONTNEED = 4;
    public const int MADV_HUGEPAGE = 14;

    public const int EFD_CLOEXEC = 0x80000;
    public const int EFD_NONBLOCK = 0x800;

    public const int PR_SET_IO_FLUSHER = 57;
    public const int PR_SET_NAME = 15;

    // x86-64 syscall numbers for the io_uring family (glibc 2.36 has no wrappers).
    public const long SYS_gettid = 186;
    public const long SYS_io_uring_setup = 425;
    public const long SYS_io_uring_enter = 426;
    public const long SYS_io_uring_register = 427;

    [LibraryImport(Lib, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Open(string path, int flags, int mode);

    [LibraryImport(Lib, EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport(Lib, EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, void* buf, nuint count);

    [LibraryImport(Lib, EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, void* buf, nuint count);

    [LibraryImport(Lib, EntryPoint = "pread", SetLastError = true)]
    public static partial nint PRead(int fd, void* buf, nuint count, long offset);

    [LibraryImport(Lib, EntryPoint = "pwrite", SetLastError = true)]
    public static partial nint PWrite(int fd, void* buf, nuint count, long offset);

    [LibraryImport(Lib, EntryPoint = "lseek", SetLastError = true)]
    public static partial long LSeek(int fd, long offset, int whence);

    [LibraryImport(Lib, EntryPoint = "ftruncate", SetLastError = true)]
    public static partial int FTruncate(int fd, long length);

    [LibraryImport(Lib, EntryPoint = "fallocate", SetLastError = true)]
    public static partial int FAllocate(int fd, int mode, long offset, long len);

    [LibraryImport(Lib, EntryPoint = "fdatasync", SetLastError = true)]
    public static partial int FDataSync(int fd);

    [LibraryImport(Lib, EntryPoint = "fstat", SetLastError = true)]
    public static partial int FStat(int fd, StatBuf* buf);

    [LibraryImport(Lib, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(int fd, ulong request, void* arg);

    [LibraryImport(Lib, EntryPoint = "mmap", SetLastError = true)]
    public static partial nint Mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport(Lib, EntryPoint = "munmap", SetLastError = true)]
    public static partial int Munmap(nint addr, nuint length);

    [LibraryImport(Lib, EntryPoint = "madvise", SetLastError = true)]
    public static partial int Madvise(nint addr, nuint length, int advice);

    [LibraryImport(Lib, EntryPoint = "eventfd", SetLastError = true)]
    public static partial int EventFd(uint initval, int flags);

    [LibraryImport(Lib, EntryPoint = "getpid")]
    public static partial int GetPid();

    [LibraryImport(Lib, EntryPoint = "geteuid")]
    public static partial uint GetEuid();

    [LibraryImport(Lib, EntryPoint = "prctl", SetLastError = true)]
    public static partial int Prctl(int option, nuint arg2, nuint arg3, nuint arg4, nuint arg5);

    [LibraryImport(Lib, EntryPoint = "sched_setaffinity", SetLastError = true)]
    public static partial int SchedSetAffinity(int pid, nuint cpusetsize, ulong* mask);

    [LibraryImport(Lib, EntryPoint = "sched_getaffinity", SetLastError = true)]
    public static partial int SchedGetAffinity(int pid, nuint cpusetsize, ulong* mask);

    [LibraryImport(Lib, EntryPoint = "sched_getcpu")]
    public static partial int SchedGetCpu();

    [LibraryImport(Lib, EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int sig);

    /// <summary>syscall(2) with up to six integer arguments (the x86-64 ABI passes them in registers, so the variadic callee reads them correctly).</summary>
    [LibraryImport(Lib, EntryPoint = "syscall", SetLastError = true)]
    public static partial long Syscall6(long number, nint a1, nint a2, nint a3, nint a4, nint a5, nint a6);

    public static int GetTid() => (int)Syscall6(SYS_gettid, 0, 0, 0, 0, 0, 0);

    /// <summary>The part of x86-64 <c>struct stat</c> that Ublk.Aot reads (144 bytes).</summary>
    [StructLayout(LayoutKind.Explicit, Size = 144)]
    public struct StatBuf
    {
        [FieldOffset(0)] public ulong st_dev;
        [FieldOffset(24)] public uint st_mode;
        [FieldOffset(40)] public ulong st_rdev;
        [FieldOffset(48)] public long st_size;
        [FieldOffset(56)] public long st_blksize;
        [FieldOffset(64)] public long st_blocks;
    }

    public const uint S_IFMT = 0xF000;
    public const uint S_IFREG = 0x8000;
    public const uint S_IFBLK = 0x6000;
    public const uint S_IFCHR = 0x2000;

    // ioctl requests on block devices (linux/fs.h).
    public const ulong BLKSSZGET = 0x1268;
    public const ulong BLKGETSIZE64 = 0x80081272;
    public const ulong BLKFLSBUF = 0x1261;
}
