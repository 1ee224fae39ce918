namespace Ublk.Aot.Ring;

/// <summary>How to set up an <see cref="IoUring"/>. Defaults suit a ring driven by one thread.</summary>
public struct IoUringOptions
{
    /// <summary>128-byte SQEs (needed for ublk control commands: 80 bytes of payload).</summary>
    public bool Sqe128;
    /// <summary>CQ size; 0 = the kernel's default (twice the SQ size).</summary>
    public uint CqEntries;
    /// <summary>IORING_SETUP_COOP_TASKRUN: no IPI to interrupt the task for task work (5.19+).</summary>
    public bool CoopTaskrun;
    /// <summary>IORING_SETUP_SINGLE_ISSUER: only the creating thread submits (6.0+). Create the ring on its owner thread.</summary>
    public bool SingleIssuer;
    /// <summary>IORING_SETUP_DEFER_TASKRUN: task work runs only inside io_uring_enter(GETEVENTS) (6.1+, implies SingleIssuer).</summary>
    public bool DeferTaskrun;
    /// <summary>Drop an optimisation flag the kernel refuses (EINVAL) instead of failing.</summary>
    public bool FallbackOnEinval;
    /// <summary>Arm an eventfd read so that <see cref="IoUring.Cancel"/> can wake a thread blocked in the ring.</summary>
    public bool Cancellable;

    public static IoUringOptions Default => new() { FallbackOnEinval = true };
}
