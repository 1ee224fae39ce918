using System;
using System.Buffers.Binary;
using Ublk.Aot.Interop;

namespace Ublk.Aot.Backends;

/// <summary>
/// The NBD protocol's numbers (NetworkBlockDevice/nbd doc/proto.md, "Values") and the fixed-size messages of the
/// transmission phase, encoded into and decoded from spans. All fields are big-endian on the wire.
/// </summary>
public static class NbdWire
{
    // Handshake ("Newstyle negotiation").
    public const ulong InitPasswd = 0x4e42444d41474943;   // "NBDMAGIC"
    public const ulong OptMagic = 0x49484156454F5054;     // "IHAVEOPT"
    public const ulong OptReplyMagic = 0x3e889045565a9;
    public const ushort FlagFixedNewstyle = 1 << 0;
    public const ushort FlagNoZeroes = 1 << 1;
    public const uint ClientFixedNewstyle = 1 << 0;
    public const uint ClientNoZeroes = 1 << 1;

    // Options and their replies.
    public const uint OptAbort = 2;
    public const uint OptInfo = 6;
    public const uint OptGo = 7;
    public const uint OptStructuredReply = 8;
    public const uint RepAck = 1;
    public const uint RepInfo = 3;
    public const uint RepErrorBit = 1u << 31;
    public const uint RepErrUnsup = RepErrorBit + 1;
    public const uint RepErrPolicy = RepErrorBit + 2;
    public const uint RepErrInvalid = RepErrorBit + 3;
    public const uint RepErrPlatform = RepErrorBit + 4;
    public const uint RepErrTlsReqd = RepErrorBit + 5;
    public const uint RepErrUnknown = RepErrorBit + 6;
    public const uint RepErrShutdown = RepErrorBit + 7;
    public const uint RepErrBlockSizeReqd = RepErrorBit + 8;
    public const uint RepErrTooBig = RepErrorBit + 9;
    public const ushort InfoExport = 0;
    public const ushort InfoBlockSize = 3;

    // Transmission flags (NBD_INFO_EXPORT).
    public const ushort TxHasFlags = 1 << 0;
    public const ushort TxReadOnly = 1 << 1;
    public const ushort TxSendFlush = 1 << 2;
    public const ushort TxSendFua = 1 << 3;
    public const ushort TxRotational = 1 << 4;
    public const ushort TxSendTrim = 1 << 5;
    public const ushort TxSendWriteZeroes = 1 << 6;
    public const ushort TxCanMultiConn = 1 << 8;

    // Requests and replies ("Transmission").
    public const uint RequestMagic = 0x25609513;
    public const uint SimpleReplyMagic = 0x67446698;
    public const uint StructuredReplyMagic = 0x668e33ef;
    public const ushort CmdRead = 0, CmdWrite = 1, CmdDisc = 2, CmdFlush = 3, CmdTrim = 4, CmdWriteZeroes = 6;
    public const ushort CmdFlagFua = 1 << 0;
    public const ushort CmdFlagNoHole = 1 << 1;
    public const ushort ReplyFlagDone = 1 << 0;
    public const ushort ReplyTypeNone = 0, ReplyTypeOffsetData = 1, ReplyTypeOffsetHole = 2;
    public const ushort ReplyTypeErrorBit = 1 << 15;
    public const ushort ReplyTypeError = ReplyTypeErrorBit + 1, ReplyTypeErrorOffset = ReplyTypeErrorBit + 2;

    public const int RequestSize = 28;
    public const int SimpleReplySize = 16;
    public const int StructuredReplySize = 20;

    /// <summary>The 28-byte request header ("Request message").</summary>
    public static void WriteRequest(Span<byte> b, ushort flags, ushort type, ulong cookie, ulong offset, uint length)
    {
        BinaryPrimitives.WriteUInt32BigEndian(b, RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(b[4..], flags);
        BinaryPrimitives.WriteUInt16BigEndian(b[6..], type);
        BinaryPrimitives.WriteUInt64BigEndian(b[8..], cookie);
        BinaryPrimitives.WriteUInt64BigEndian(b[16..], offset);
        BinaryPrimitives.WriteUInt32BigEndian(b[24..], length);
    }

    /// <summary>NBD's errno values ("Error values") as Linux -errno for ublk; anything else is EIO.</summary>
    public static int ToErrno(uint nbdError) => nbdError switch
    {
        0 => 0,
        1 => -1,     // EPERM
        12 => -12,   // ENOMEM
        22 => -22,   // EINVAL
        28 => -28,   // ENOSPC
        75 => -75,   // EOVERFLOW
        95 => -95,   // EOPNOTSUPP (ENOTSUP)
        108 => -Errno.ESHUTDOWN,
        _ => -5,     // EIO
    };

    /// <summary>What an option's error reply means, for the one-line refusal.</summary>
    public static string ReplyName(uint type) => type switch
    {
        RepErrUnsup => "the server does not know this option (NBD_REP_ERR_UNSUP)",
        RepErrPolicy => "refused by the server's policy (NBD_REP_ERR_POLICY)",
        RepErrInvalid => "the server calls the request invalid (NBD_REP_ERR_INVALID)",
        RepErrPlatform => "not supported on the server's platform (NBD_REP_ERR_PLATFORM)",
        RepErrTlsReqd => "the server requires TLS, which ublk-aot does not have (NBD_REP_ERR_TLS_REQD)",
        RepErrUnknown => "no such export (NBD_REP_ERR_UNKNOWN)",
        RepErrShutdown => "the server is shutting down (NBD_REP_ERR_SHUTDOWN)",
        RepErrBlockSizeReqd => "the server requires block size negotiation (NBD_REP_ERR_BLOCK_SIZE_REQD)",
        RepErrTooBig => "the request is too big for the server (NBD_REP_ERR_TOO_BIG)",
        _ => "error reply 0x" + type.ToString("x8", System.Globalization.CultureInfo.InvariantCulture),
    };
}

/// <summary>What the handshake learned of an export (NBD_INFO_EXPORT and NBD_INFO_BLOCK_SIZE).</summary>
public readonly record struct NbdExport(ulong Size, ushort Flags, uint MinBlock, uint PreferredBlock, uint MaxPayload, bool Structured)
{
    public bool ReadOnly => (Flags & NbdWire.TxReadOnly) != 0;
    public bool Flush => (Flags & NbdWire.TxSendFlush) != 0;
    public bool Fua => (Flags & NbdWire.TxSendFua) != 0;
    public bool Trim => (Flags & NbdWire.TxSendTrim) != 0;
    public bool WriteZeroes => (Flags & NbdWire.TxSendWriteZeroes) != 0;
    public bool MultiConn => (Flags & NbdWire.TxCanMultiConn) != 0;
    public bool Rotational => (Flags & NbdWire.TxRotational) != 0;
}
