using System;
using System.IO;
using System.Threading;
using Ublk.Aot.Interop;

namespace Ublk.Aot.Cli;

/// <summary>
/// A bound stream socket that listens, served by one background thread (never a queue thread): each connection is
/// accepted, handed to the server's handler and closed; <see cref="Dispose"/> wakes the thread through an eventfd,
/// waits for a request in progress and closes the socket. A unix socket's path is removed then only while it is
/// still the one bound here (its inode): a newer server (upgrade, recover) may already have put its own there.
/// Used by the control socket and by `serve --metrics`.
/// </summary>
internal sealed unsafe class SocketListener : IDisposable
{
    private readonly int _fd;
    private readonly int _wake;
    private readonly string? _path;
    private readonly ulong _inode;
    private Thread? _thread;
    private int _disposed;

    private SocketListener(int fd, int wake, string? path, ulong inode)
    {
        _fd = fd;
        _wake = wake;
        _path = path;
        _inode = inode;
    }

    /// <summary>
    /// Listens on <paramref name="fd"/>, bound to <paramref name="unixPath"/> (or to an IP address: null). Connections
    /// wait in the backlog until <see cref="Start"/>. On failure (SysException naming <paramref name="what"/>) the
    /// caller still owns <paramref name="fd"/> and the path.
    /// </summary>
    public static SocketListener Listen(int fd, int backlog, string? unixPath, string what)
    {
        ulong inode = 0;
        if (unixPath != null)
        {
            Libc.StatBuf st;
            if (Libc.LStat(unixPath, &st) != 0) throw new SysException("lstat(" + unixPath + ")", Errno.Last);
            inode = st.st_ino;
        }
        if (Libc.Listen(fd, backlog) != 0) throw new SysException("listen(" + what + ")", Errno.Last);
        int wake = Libc.EventFd(0, Libc.EFD_CLOEXEC);
        if (wake < 0) throw new SysException("eventfd", Errno.Last);
        return new SocketListener(fd, wake, unixPath, inode);
    }

    /// <summary>Starts the thread <paramref name="name"/>, which hands each accepted connection to <paramref name="serve"/>.</summary>
    public void Start(string name, Action<int> serve)
    {
        _thread = new Thread(() => Loop(serve)) { IsBackground = true, Name = name };
        _thread.Start();
    }

    private void Loop(Action<int> serve)
    {
        Libc.PollFd* fds = stackalloc Libc.PollFd[2];
        while (true)
        {
            fds[0] = new Libc.PollFd { Fd = _fd, Events = Libc.POLLIN };
            fds[1] = new Libc.PollFd { Fd = _wake, Events = Libc.POLLIN };
            int n = Libc.Poll(fds, 2, -1);
            if (n < 0 && Errno.Last == Errno.EINTR) continue;
            if (n < 0 || fds[1].Revents != 0) return;
            if (fds[0].Revents == 0) continue;
            int c = Libc.Accept4(_fd, null, null, Libc.SOCK_CLOEXEC);
            if (c < 0) continue;
            try { serve(c); }
            finally { Libc.Close(c); }
        }
    }

    /// <summary>Stops the thread (a request in progress finishes first), closes the socket, removes a unix path that is still ours.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        ulong one = 1;
        Libc.Write(_wake, &one, 8);
        _thread?.Join();
        Libc.Close(_fd);
        Libc.Close(_wake);
        if (_path == null) return;
        Libc.StatBuf st;
        if (Libc.LStat(_path, &st) == 0 && st.st_ino == _inode)
        {
            try { File.Delete(_path); } catch (IOException) { }
        }
    }
}
