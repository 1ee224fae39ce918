using Ublk.Aot.Interop;

namespace Ublk.Aot.Ublk;

/// <summary>A ublk setup/control failure with a message meant for a person (one line, names the device and cause).</summary>
public sealed class UblkException(string message, int errno = 0) : UblkAotException(message, errno);
