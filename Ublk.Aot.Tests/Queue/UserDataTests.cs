using System;
using Ublk.Aot.Ring;
using Ublk.Aot.Ublk;
using Xunit;

namespace Ublk.Aot.Tests.Queue;

public sealed class UserDataTests
{
    [Fact]
    public void Queue_ops_round_trip_for_every_tag()
    {
        foreach (QueueOp op in Enum.GetValues<QueueOp>())
        {
            for (int t = 0; t <= ushort.MaxValue; t += 97)
            {
                var ud = new UserData(UserData.ForQueue(op, (ushort)t));
                Assert.False(ud.IsTarget);
                Assert.Equal(op, ud.Op);
                Assert.Equal((ushort)t, ud.Tag);
            }
        }
    }

    [Fact]
    public void Target_sub_ops_round_trip_and_never_look_like_queue_ops_or_the_cancel_wake_up()
    {
        for (int sub = 0; sub <= byte.MaxValue; sub++)
        {
            foreach (ushort tag in new ushort[] { 0, 1, 4095, ushort.MaxValue })
            {
                ulong v = UserData.ForTarget((byte)sub, tag);
                var ud = new UserData(v);
                Assert.True(ud.IsTarget);
                Assert.Equal((byte)sub, ud.SubOp);
                Assert.Equal(tag, ud.Tag);
                Assert.NotEqual(IoUring.CancelUserData, v);
                Assert.NotEqual(UserData.ForQueue((QueueOp)sub, tag), v);
            }
        }
    }

    [Fact]
    public void Fields_land_where_the_layout_comment_says()
    {
        // bit 63 target, bits 16-23 op, bits 0-15 tag, everything else zero.
        Assert.Equal(0x8000_0000_00AB_1234UL, UserData.ForTarget(0xAB, 0x1234));
        Assert.Equal(0x0000_0000_0002_0FFFUL, UserData.ForQueue(QueueOp.IdleTick, 0x0FFF));
        Assert.Equal(0x0000_0000_0001_0000UL, UserData.ForQueue(QueueOp.Commit, 0));
        Assert.Equal(0UL, UserData.ForQueue(QueueOp.Fetch, 0));
    }
}
