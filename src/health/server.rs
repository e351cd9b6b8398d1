//! The listeners for `--healthz-port` and `--metrics-port`: hyper's HTTP/1 server on a
//! thread of its own (a current-thread tokio runtime), built so that no client can hold a
//! port shut for another:
//!
//! - every connection is a task of its own, served concurrently; at most
//!   [`Limits::max_connections`] are open in all and [`Limits::max_per_peer`] from one
//!   address, and past either a new connection is closed at once (queued behind the others,
//!   they could delay it);
//! - a request's head must arrive within [`Limits::head_timeout`] (a client trickling a
//!   byte a second is cut off), and no connection lives longer than [`Limits::lifetime`]
//!   (an idle one, a keep-alive one);
//! - a request head is at most [`Limits::max_head`] bytes (431 past it); bodies are never
//!   read.
//!
//! The server it replaces answered one connection at a time with a 2 s read timeout, so
//! three idle connections held `/healthz` past kubelet's 1 s probe timeout: any pod that
//! reached the node's address could have kubelet restart weft.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::Status;

/// What one listener allows its clients.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections open at once, all clients together.
    pub(crate) max_connections: usize,
    /// Connections open at once from one address. Above 100, so a monitoring host that
    /// keeps many open is not refused; below `max_connections`, so one address cannot take
    /// every slot.
    pub(crate) max_per_peer: usize,
    /// From a connection's first read (or the end of its last response) to a complete
    /// request head.
    pub(crate) head_timeout: Duration,
    /// A connection's whole life.
    pub(crate) lifetime: Duration,
    /// The largest request head read (hyper's buffer; 8 KiB at the least).
    pub(crate) max_head: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_per_peer: 128,
            head_timeout: Duration::from_secs(2),
            lifetime: Duration::from_secs(10),
            max_head: 16 * 1024,
        }
    }
}

/// A listener on `addr` with `SO_REUSEPORT`, so a successor binds beside its predecessor
/// during a hand-over ([`crate::handover`]); any other process on the port still makes it
/// fail.
fn bind_shared(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Binds `addr` and serves `status` there from a thread named `weft-<what>`; returns the
/// bound address (its port is chosen when `addr`'s is 0). Binding and the runtime are made
/// here, so a port in use fails start-up.
pub(crate) fn serve(
    what: &str,
    addr: SocketAddr,
    status: Arc<Status>,
    limits: Limits,
) -> std::io::Result<SocketAddr> {
    let listener = bind_shared(addr).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} (--{what}-ip, --{what}-port): {e}"),
        )
    })?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name(format!("weft-{what}"))
        .spawn(move || {
            // Serving reads needs no privilege.
            crate::privilege::drop_all_in_this_thread();
            rt.block_on(accept_loop(listener, status, limits));
        })?;
    Ok(bound)
}

async fn accept_loop(listener: std::net::TcpListener, status: Arc<Status>, limits: Limits) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "health listener stopped");
            return;
        }
    };
    let open = Arc::new(Mutex::new(Open::default()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin; clients are refused by
                // the kernel's backlog meanwhile.
                tracing::debug!(error = %e, "health listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over a limit: closed at once, which the client sees as an empty reply.
        let Some(slot) = Slot::take(&open, peer.ip(), &limits) else {
            continue;
        };
        tokio::spawn(serve_connection(stream, slot, status.clone(), limits));
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    _slot: Slot,
    status: Arc<Status>,
    limits: Limits,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let response = answer(&status, &req);
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(limits.max_head)
        .serve_connection(TokioIo::new(stream), service);
    // A connection past its lifetime is dropped, which closes it.
    let _ = tokio::time::timeout(limits.lifetime, conn).await;
}

fn answer(status: &Status, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (code, body) = super::respond_to(status, req.method().as_str(), req.uri().path());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() =
        hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Connections open now, in all and by peer address.
#[derive(Default)]
struct Open {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
}

/// One open connection's place in [`Open`], given back when the connection ends.
struct Slot {
    open: Arc<Mutex<Open>>,
    peer: IpAddr,
}

impl Slot {
    fn take(open: &Arc<Mutex<Open>>, peer: IpAddr, limits: &Limits) -> Option<Slot> {
        let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
        let mine = o.by_peer.get(&peer).copied().unwrap_or(0);
        if o.total >= limits.max_connections || mine >= limits.max_per_peer {
            return None;
        }
        o.total += 1;
        o.by_peer.insert(peer, mine + 1);
        Some(Slot {
            open: open.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut o = self.open.lock().unwrap_or_else(|e| e.into_inner());
        o.total -= 1;
        if let Some(n) = o.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                o.by_peer.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests;
