//! WireGuard's cross-platform configuration protocol (UAPI,
//! <https://www.wireguard.com/xplatform/#configuration-protocol>), the `get` side, which
//! is what `wg show` asks a userspace WireGuard's socket
//! (`/var/run/wireguard/<dev>.sock`): the device's state as `key=value` lines, in the
//! order wireguard-go writes them. `set` is refused (`errno=-1`, EPERM): weft's peers
//! come from the store, and a peer added by hand would be gone at the next lease change.
//! Pure: the dataplane publishes a [`Device`] and the socket thread answers from it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

use super::Key;

/// One peer, as `wg show` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    /// Its public key.
    pub public_key: Key,
    /// The preshared key.
    pub psk: Option<Key>,
    /// Where it is reached now.
    pub endpoint: Option<SocketAddr>,
    /// When its current session was established.
    pub last_handshake: Option<SystemTime>,
    /// Bytes sent to it and received from it, on the wire.
    pub tx_bytes: u64,
    /// See `tx_bytes`.
    pub rx_bytes: u64,
    /// Seconds between keepalives.
    pub keepalive: Option<u16>,
    /// Its allowed IPs (its lease's subnet).
    pub allowed_ips: Vec<IpNet>,
}

/// The device, as `wg show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Device {
    /// The private key (the socket is root's alone, as wireguard-go's and the kernel's
    /// netlink are).
    pub private_key: Option<Key>,
    /// The UDP port.
    pub listen_port: u16,
    /// The peers.
    pub peers: Vec<PeerState>,
}

/// An operation read from the socket.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `get=1`, then an empty line.
    Get,
    /// `set=1` and its lines, up to an empty line.
    Set,
}

/// Parses the request at the start of `input` once it is whole: (the request, bytes it
/// took), `None` while more is needed, `Err` for an unknown operation (close the
/// connection, as wireguard-go does).
pub fn parse(input: &[u8]) -> Result<Option<(Request, usize)>, String> {
    let Some(nl) = input.iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let op = match &input[..nl] {
        b"get=1" => Request::Get,
        b"set=1" => Request::Set,
        other => {
            return Err(format!(
                "unknown UAPI operation {:?}",
                String::from_utf8_lossy(other)
            ))
        }
    };
    // The request ends at the first empty line.
    let end = input[nl..].windows(2).position(|w| w == b"\n\n");
    Ok(end.map(|e| (op, nl + e + 2)))
}

/// The answer to `req`: the device's lines for a get, then `errno=N` and an empty line.
pub fn respond(req: &Request, dev: &Device) -> String {
    match req {
        Request::Get => {
            let mut s = get(dev);
            s.push_str("errno=0\n\n");
            s
        }
        Request::Set => "errno=-1\n\n".to_string(),
    }
}

fn get(dev: &Device) -> String {
    let mut s = String::new();
    let hex = |k: &Key| k.0.iter().map(|b| format!("{b:02x}")).collect::<String>();
    if let Some(k) = &dev.private_key {
        let _ = writeln!(s, "private_key={}", hex(k));
    }
    let _ = writeln!(s, "listen_port={}", dev.listen_port);
    for p in &dev.peers {
        let _ = writeln!(s, "public_key={}", hex(&p.public_key));
        let psk = p.psk.unwrap_or(Key([0; 32]));
        let _ = writeln!(s, "preshared_key={}\nprotocol_version=1", hex(&psk));
        if let Some(e) = p.endpoint {
            let _ = writeln!(s, "endpoint={e}");
        }
        let at = p
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "last_handshake_time_sec={}\nlast_handshake_time_nsec={}\ntx_bytes={}\nrx_bytes={}\npersistent_keepalive_interval={}",
            at.as_secs(),
            at.subsec_nanos(),
            p.tx_bytes,
            p.rx_bytes,
            p.keepalive.unwrap_or(0)
        );
        for ip in &p.allowed_ips {
            let _ = writeln!(s, "allowed_ip={ip}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_taken_whole_and_unknown_ones_refused() {
        assert_eq!(parse(b"get=1\n"), Ok(None));
        assert_eq!(parse(b"get=1\n\n"), Ok(Some((Request::Get, 7))));
        assert_eq!(
            parse(b"set=1\npublic_key=00\n\nget=1\n\n"),
            Ok(Some((Request::Set, 21)))
        );
        assert!(parse(b"delete=1\n\n").is_err());
        assert_eq!(parse(b""), Ok(None));
    }

    #[test]
    fn a_get_lists_the_device_then_each_peer_in_wireguard_go_s_order() {
        let key = Key([0xab; 32]);
        let dev = Device {
            private_key: Some(Key([1; 32])),
            listen_port: 51820,
            peers: vec![PeerState {
                public_key: key,
                psk: None,
                endpoint: Some("192.0.2.2:51820".parse().unwrap()),
                last_handshake: Some(UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 5)),
                tx_bytes: 10,
                rx_bytes: 20,
                keepalive: Some(25),
                allowed_ips: vec!["10.244.2.0/24".parse().unwrap()],
            }],
        };
        let text = respond(&Request::Get, &dev);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("private_key={}", "01".repeat(32)));
        assert_eq!(lines[1], "listen_port=51820");
        assert_eq!(lines[2], format!("public_key={}", "ab".repeat(32)));
        assert_eq!(lines[3], format!("preshared_key={}", "00".repeat(32)));
        assert_eq!(
            &lines[4..],
            [
                "protocol_version=1",
                "endpoint=192.0.2.2:51820",
                "last_handshake_time_sec=1700000000",
                "last_handshake_time_nsec=5",
                "tx_bytes=10",
                "rx_bytes=20",
                "persistent_keepalive_interval=25",
                "allowed_ip=10.244.2.0/24",
                "errno=0",
                "",
            ]
        );
        assert!(text.ends_with("errno=0\n\n"));
        assert_eq!(respond(&Request::Set, &dev), "errno=-1\n\n");
    }
}
