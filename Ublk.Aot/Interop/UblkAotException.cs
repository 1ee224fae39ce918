using System;

namespace Ublk.Aot.Interop;

/// <summary>
/// The base of every error ublk-aot reports to a person: one line that names what failed and why, and the errno
/// behind it (0 if none). The command line catches this one type; <see cref="IsBadInput"/> picks the exit code
/// (2 for input the user can correct, 1 for a failure at run time).
/// </summary>
public abstract class UblkAotException(string message, int errno) : Exception(message)
{
    /// <summary>errno behind the failure (positive), 0 if none.</summary>
    public int Errno { get; } = Math.Abs(errno);

    /// <summary>True when the input (arguments, a spec, a missing file) is at fault rather than the run.</summary>
    public virtual bool IsBadInput => false;
}
