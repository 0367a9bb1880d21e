//! QUIC endpoint tuning shared by both ends: the UDP socket and quinn's transport settings.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

/// A UDP socket for QUIC on `addr`, dual-stack where `addr` is IPv6, with large buffers.
pub fn udp_socket(addr: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = sock.set_only_v6(false);
    }
    // Large socket buffers keep bursts of QUIC packets from being dropped (docs/benchmarks.md).
    let _ = sock.set_recv_buffer_size(8 << 20);
    let _ = sock.set_send_buffer_size(8 << 20);
    sock.bind(&addr.into())
        .with_context(|| format!("binding UDP {addr}"))?;
    Ok(sock.into())
}

/// quinn transport settings tuned for bulk device transfers on LANs (docs/benchmarks.md).
pub fn transport_config(
    max_streams: u32,
    idle: Duration,
) -> anyhow::Result<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(max_streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.max_idle_timeout(Some(idle.try_into().context("idle timeout out of range")?));
    t.stream_receive_window((16u32 << 20).into());
    t.receive_window((64u32 << 20).into());
    t.send_window(64 << 20);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(65_000);
    t.mtu_discovery_config(Some(mtu));
    Ok(t)
}
