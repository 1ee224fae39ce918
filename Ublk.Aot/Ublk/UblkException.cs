using System;

namespace Ublk.Aot.Ublk;

/// <summary>A ublk setup/control failure with a message meant for a person (one line, names the device and cause).</summary>
public sealed class UblkException : Exception
{
    /// <summary>errno behind the failure, 0 if none.</summary>
    public int Errno { get; }

    public UblkException(string message, int errno = 0) : base(message) => Errno = Math.Abs(errno);
}
