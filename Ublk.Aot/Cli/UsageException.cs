using Ublk.Aot.Interop;

namespace Ublk.Aot.Cli;

/// <summary>Bad command-line input: printed as one line, exit code 2.</summary>
public sealed class UsageException(string message) : UblkAotException(message, 0)
{
    public override bool IsBadInput => true;
}
