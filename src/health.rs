//! `--healthz-port`: `/healthz` and `/readyz` (as flanneld serves them), `/metrics`
//! (Prometheus text), and `/leases` (the forwarding table, one lease per line). A tiny
//! HTTP/1.0 responder on its own thread: one request per connection, no dependencies.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::dataplane::counters::Counters;
use crate::lease::table::BackendKind;
use crate::lease::LeaseTable;

/// Serves on `addr` in a background thread.
pub(crate) fn serve(
    addr: SocketAddr,
    counters: Counters,
    table: Arc<LeaseTable>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on --healthz {addr}: {e}"))
    })?;
    std::thread::Builder::new()
        .name("weft-healthz".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = handle(conn, &counters, &table);
            }
        })?;
    Ok(())
}

fn handle(mut conn: TcpStream, counters: &Counters, table: &LeaseTable) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/healthz" | "/readyz" => ("200 OK", "ok\n".to_string()),
        "/metrics" => ("200 OK", counters.totals().prometheus(table.load().len())),
        "/leases" => ("200 OK", leases_text(table)),
        _ => (
            "404 Not Found",
            "not found; try /healthz, /metrics or /leases\n".to_string(),
        ),
    };
    write!(
        conn,
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The table as text: `subnet public-ip backend [vni mac]`.
pub(crate) fn leases_text(table: &LeaseTable) -> String {
    let snap = table.load();
    let mut s = String::new();
    for p in snap.peers() {
        let backend = match p.backend {
            BackendKind::Vxlan => format!("vxlan vni={} mac={}", p.vni, p.vtep_mac),
            BackendKind::Udp => "udp".to_string(),
            BackendKind::Other => "other".to_string(),
        };
        s.push_str(&format!("{} {} {}\n", p.subnet, p.public_ip, backend));
    }
    s
}
