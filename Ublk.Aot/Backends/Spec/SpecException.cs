using Ublk.Aot.Interop;

namespace Ublk.Aot.Backends;

/// <summary>A --backend SPEC that cannot be served as written (bad syntax, a missing or unusable file): bad input.</summary>
public sealed class SpecException(string message, int errno = 0) : UblkAotException(message, errno)
{
    public override bool IsBadInput => true;
}
