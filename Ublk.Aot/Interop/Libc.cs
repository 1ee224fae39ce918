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

    public const int SIGUSR1 = 10;

    /// <summary>execv(3): replaces this process with <paramref name="path"/>; returns only on failure (-1, errno).</summary>
    [LibraryImport(Lib, EntryPoint = "execv", SetLastError = true)]
    public static partial int Execv(byte* path, byte** argv);

    // Mount namespaces (serve runs in its own: see Cli/MountNamespace.cs). x86-64 / uapi values.
    public const int CLONE_NEWNS = 0x00020000;
    public const ulong MS_REC = 16384;
    public const ulong MS_PRIVATE = 1 << 18;
    public const int MNT_DETACH = 2;

    /// <summary>unshare(2): this thread leaves the namespaces named in <paramref name="flags"/> for new ones.</summary>
    [LibraryImport(Lib, EntryPoint = "unshare", SetLastError = true)]
    public static partial int Unshare(int flags);

    [LibraryImport(Lib, EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Mount(string? source, string target, string? fstype, ulong flags, nint data);

    [LibraryImport(Lib, EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Umount2(string target, int flags);

    /// <summary>setenv(3): the C environment, which execv passes on (.NET's Environment keeps its own copy).</summary>
    [LibraryImport(Lib, EntryPoint = "setenv", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int SetEnv(string name, string value, int overwrite);

    [LibraryImport(Lib, EntryPoint = "access", SetLastError = true)]
    public static partial int Access(byte* path, int mode);

    public const int X_OK = 1;

    /// <summary>Replaces this process with <paramref name="path"/> run with <paramref name="argv"/> (argv[0] included). Returns errno on failure.</summary>
    public static int Exec(string path, string[] argv)
    {
        byte*[] ptrs = new byte*[argv.Length + 1];
        byte* p = (byte*)Marshal.StringToCoTaskMemUTF8(path);
        try
        {
            FillArgv(ptrs, argv);
            fixed (byte** a = ptrs) Execv(p, a);
            return Errno.Last;
        }
        finally
        {
            Marshal.FreeCoTaskMem((nint)p);
            FreeArgv(ptrs);
        }
    }

    /// <summary>UTF-8 copies of <paramref name="argv"/> into <paramref name="ptrs"/> (one longer: the last stays null).</summary>
    private static void FillArgv(byte*[] ptrs, string[] argv)
    {
        for (int i = 0; i < argv.Length; i++) ptrs[i] = (byte*)Marshal.StringToCoTaskMemUTF8(argv[i]);
    }

    /// <summary>Frees what <see cref="FillArgv"/> allocated (also after it failed half-way).</summary>
    private static void FreeArgv(byte*[] ptrs)
    {
        for (int i = 0; i < ptrs.Length; i++) Marshal.FreeCoTaskMem((nint)ptrs[i]);
    }

    [LibraryImport(Lib, EntryPoint = "pipe2", SetLastError = true)]
    private static partial int Pipe2(int* fds, int flags);

    [LibraryImport(Lib, EntryPoint = "poll", SetLastError = true)]
    public static partial int Poll(PollFd* fds, nuint n, int timeoutMs);

    [LibraryImport(Lib, EntryPoint = "waitpid", SetLastError = true)]
    private static partial int WaitPid(int pid, int* status, int options);

    [LibraryImport(Lib, EntryPoint = "posix_spawn")]
    private static partial int PosixSpawn(int* pid, byte* path, void* fileActions, void* attr, byte** argv, byte** envp);

    [LibraryImport(Lib, EntryPoint = "posix_spawn_file_actions_init")]
    private static partial int SpawnActionsInit(void* fa);

    [LibraryImport(Lib, EntryPoint = "posix_spawn_file_actions_adddup2")]
    private static partial int SpawnActionsDup2(void* fa, int fd, int newFd);

    [LibraryImport(Lib, EntryPoint = "posix_spawn_file_actions_destroy")]
    private static partial int SpawnActionsDestroy(void* fa);

    public struct PollFd
    {
        public int Fd;
        public short Events, Revents;
    }

    public const int POLLIN = 1;
    public const int POLLOUT = 4;
    public const int POLLERR = 8;
    public const int POLLHUP = 0x10;

    /// <summary>
    /// Runs <paramref name="path"/> with <paramref name="argv"/> (argv[0] included) and an empty environment, its stdout
    /// and stderr captured (the first 4 KiB), for at most <paramref name="timeoutMs"/> (then SIGKILL). Returns its exit
    /// code, 128 + signal if a signal ended it, -1 on timeout, or -errno if it could not be started. posix_spawn, not
    /// System.Diagnostics.Process: that class alone would add ~0.8 MB to the binary for one `--version`.
    /// </summary>
    public static int RunCaptured(string path, string[] argv, int timeoutMs, out string output)
    {
        output = "";
        int* fds = stackalloc int[2];
        if (Pipe2(fds, O_CLOEXEC) != 0) return -Errno.Last;
        byte* fa = stackalloc byte[256]; // posix_spawn_file_actions_t is 80 bytes on glibc x86-64
        SpawnActionsInit(fa);
        SpawnActionsDup2(fa, fds[1], 1);
        SpawnActionsDup2(fa, fds[1], 2);
        byte*[] args = new byte*[argv.Length + 1];
        byte* p = (byte*)Marshal.StringToCoTaskMemUTF8(path);
        int pid = 0, rc;
        byte* noEnv = null;
        try
        {
            FillArgv(args, argv);
            fixed (byte** a = args) rc = PosixSpawn(&pid, p, fa, null, a, &noEnv);
        }
        finally
        {
            SpawnActionsDestroy(fa);
            Marshal.FreeCoTaskMem((nint)p);
            FreeArgv(args);
            Close(fds[1]);
        }
        if (rc != 0) { Close(fds[0]); return -rc; }

        var text = new System.Text.StringBuilder();
        byte* buf = stackalloc byte[512];
        long until = Environment.TickCount64 + timeoutMs;
        bool timedOut = false;
        while (true)
        {
            int left = (int)Math.Max(0, until - Environment.TickCount64);
            PollFd pfd = new() { Fd = fds[0], Events = POLLIN };
            int n = Poll(&pfd, 1, left);
            if (n < 0 && Errno.Last == Errno.EINTR) continue;
            if (n <= 0) { timedOut = n == 0; break; }
            nint got = Read(fds[0], buf, 512);
            if (got < 0 && Errno.Last == Errno.EINTR) continue;
            if (got <= 0) break;
            if (text.Length < 4096) text.Append(System.Text.Encoding.UTF8.GetString(buf, (int)got));
        }
        Close(fds[0]);
        if (timedOut) Kill(pid, 9);
        int status = 0;
        while (WaitPid(pid, &status, 0) < 0 && Errno.Last == Errno.EINTR) { }
        output = text.ToString();
        if (timedOut) return -1;
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f);
    }

    /// <summary>This process may execute <paramref name="path"/> (access(2) X_OK).</summary>
    public static bool IsExecutable(string path)
    {
        byte* p = (byte*)Marshal.StringToCoTaskMemUTF8(path);
        try { return Access(p, X_OK) == 0; }
        finally { Marshal.FreeCoTaskMem((nint)p); }
    }

    // Unix-domain stream sockets (the server's control socket, /run/ublk-aot/ID.sock).
    public const int AF_UNIX = 1;
    public const int SOCK_STREAM = 1;
    public const int SOCK_DGRAM = 2;
    public const int MSG_NOSIGNAL = 0x4000;
    public const int SOCK_CLOEXEC = 0x80000;
    public const int SEEK_DATA = 3;

    public const int SHUT_RDWR = 2;

    [LibraryImport(Lib, EntryPoint = "shutdown", SetLastError = true)]
    public static partial int Shutdown(int fd, int how);

    /// <summary>x86-64 struct msghdr (56 bytes), for IORING_OP_SENDMSG.</summary>
    [StructLayout(LayoutKind.Sequential, Size = 56)]
    public struct MsgHdr
    {
        public nint Name;
        public uint NameLen;
        public nint Iov;
        public nuint IovLen;
        public nint Control;
        public nuint ControlLen;
        public int Flags;
    }

    /// <summary>struct sockaddr_un (110 bytes: family + 108-byte path).</summary>
    [StructLayout(LayoutKind.Sequential, Size = 110)]
    public struct SockAddrUn
    {
        public ushort Family;
        public fixed byte Path[108];
    }

    [LibraryImport(Lib, EntryPoint = "socket", SetLastError = true)]
    public static partial int Socket(int domain, int type, int protocol);

    [LibraryImport(Lib, EntryPoint = "bind", SetLastError = true)]
    public static partial int Bind(int fd, SockAddrUn* addr, uint len);

    [LibraryImport(Lib, EntryPoint = "listen", SetLastError = true)]
    public static partial int Listen(int fd, int backlog);

    [LibraryImport(Lib, EntryPoint = "accept4", SetLastError = true)]
    public static partial int Accept4(int fd, void* addr, void* len, int flags);

    [LibraryImport(Lib, EntryPoint = "connect", SetLastError = true)]
    public static partial int Connect(int fd, SockAddrUn* addr, uint len);

    // IP stream sockets (serve --metrics IP:PORT): sockaddr_in / sockaddr_in6 as in <netinet/in.h>, port and
    // address in network byte order.
    public const int AF_INET = 2;
    public const int AF_INET6 = 10;
    public const int SOL_SOCKET = 1;
    public const int SO_REUSEADDR = 2;
    public const int IPPROTO_IPV6 = 41;
    public const int IPV6_V6ONLY = 26;

    /// <summary>struct sockaddr_in (16 bytes).</summary>
    [StructLayout(LayoutKind.Sequential, Size = 16)]
    public struct SockAddrIn
    {
        public ushort Family;
        public ushort PortBE;
        public fixed byte Addr[4];
    }

    /// <summary>struct sockaddr_in6 (28 bytes).</summary>
    [StructLayout(LayoutKind.Sequential, Size = 28)]
    public struct SockAddrIn6
    {
        public ushort Family;
        public ushort PortBE;
        public uint FlowInfo;
        public fixed byte Addr[16];
        public uint ScopeId;
    }

    /// <summary>bind(2) for any address family (the caller passes the struct's real size).</summary>
    [LibraryImport(Lib, EntryPoint = "bind", SetLastError = true)]
    public static partial int BindAddr(int fd, void* addr, uint len);

    [LibraryImport(Lib, EntryPoint = "getsockname", SetLastError = true)]
    public static partial int GetSockName(int fd, void* addr, uint* len);

    [LibraryImport(Lib, EntryPoint = "setsockopt", SetLastError = true)]
    public static partial int SetSockOpt(int fd, int level, int name, void* value, uint len);

    // NBD client sockets (Backends/Nbd): a non-blocking connect with a deadline, Nagle off (<netinet/tcp.h>).
    public const int SOCK_NONBLOCK = 0x800;
    public const int SO_ERROR = 4;
    public const int IPPROTO_TCP = 6;
    public const int TCP_NODELAY = 1;

    /// <summary>connect(2) for any address family (the caller passes the struct's real size).</summary>
    [LibraryImport(Lib, EntryPoint = "connect", SetLastError = true)]
    public static partial int ConnectAddr(int fd, void* addr, uint len);

    [LibraryImport(Lib, EntryPoint = "getsockopt", SetLastError = true)]
    public static partial int GetSockOpt(int fd, int level, int name, void* value, uint* len);

    [LibraryImport(Lib, EntryPoint = "recv", SetLastError = true)]
    public static partial nint Recv(int fd, void* buf, nuint len, int flags);

    [LibraryImport(Lib, EntryPoint = "send", SetLastError = true)]
    public static partial nint Send(int fd, void* buf, nuint len, int flags);

    /// <summary>inet_pton(3): 1 if <paramref name="src"/> is an address of family <paramref name="af"/> (written to dst).</summary>
    [LibraryImport(Lib, EntryPoint = "inet_pton", StringMarshalling = StringMarshalling.Utf8)]
    public static partial int InetPton(int af, string src, void* dst);

    [LibraryImport(Lib, EntryPoint = "sendto", SetLastError = true)]
    public static partial nint SendTo(int fd, byte* buf, nuint len, int flags, SockAddrUn* addr, uint addrLen);

    [LibraryImport(Lib, EntryPoint = "chmod", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Chmod(string path, uint mode);

    [LibraryImport(Lib, EntryPoint = "lstat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int LStat(string path, StatBuf* buf);

    [LibraryImport(Lib, EntryPoint = "readlink", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial nint ReadLink(string path, byte* buf, nuint size);

    /// <summary>A sockaddr_un for <paramref name="path"/>; false when the path does not fit (107 bytes and a NUL).</summary>
    public static bool UnixAddress(string path, out SockAddrUn addr)
    {
        addr = default;
        addr.Family = AF_UNIX;
        byte[] b = System.Text.Encoding.UTF8.GetBytes(path);
        if (b.Length > 107) return false;
        for (int i = 0; i < b.Length; i++) addr.Path[i] = b[i];
        return true;
    }

    /// <summary>The target of symlink <paramref name="path"/>, or null (readlink(2)).</summary>
    public static string? ReadLinkText(string path)
    {
        byte* buf = stackalloc byte[512];
        nint n = ReadLink(path, buf, 512);
        return n < 0 || n >= 512 ? null : System.Text.Encoding.UTF8.GetString(buf, (int)n);
    }

    /// <summary>syscall(2) with up to six integer arguments (the x86-64 ABI passes them in registers, so the variadic callee reads them correctly).</summary>
    [LibraryImport(Lib, EntryPoint = "syscall", SetLastError = true)]
    public static partial long Syscall6(long number, nint a1, nint a2, nint a3, nint a4, nint a5, nint a6);

    public static int GetTid() => (int)Syscall6(SYS_gettid, 0, 0, 0, 0, 0, 0);

    /// <summary>The part of x86-64 <c>struct stat</c> that Ublk.Aot reads (144 bytes).</summary>
    [StructLayout(LayoutKind.Explicit, Size = 144)]
    public struct StatBuf
    {
        [FieldOffset(0)] public ulong st_dev;
        [FieldOffset(8)] public ulong st_ino;
        [FieldOffset(24)] public uint st_mode;
        [FieldOffset(40)] public ulong st_rdev;
        [FieldOffset(48)] public long st_size;
        [FieldOffset(56)] public long st_blksize;
        [FieldOffset(64)] public long st_blocks;
    }

    public const uint S_IFMT = 0xF000;
    public const uint S_IFREG = 0x8000;
    public const uint S_IFBLK = 0x6000;
    public const uint S_IFSOCK = 0xC000;
    public const uint S_IFCHR = 0x2000;

    // ioctl requests on block devices (linux/fs.h).
    public const ulong BLKSSZGET = 0x1268;
    public const ulong BLKGETSIZE64 = 0x80081272;
    public const ulong BLKFLSBUF = 0x1261;
}
