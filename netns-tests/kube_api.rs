//! A stand-in for kube-apiserver's node API, for the kube subnet manager's tests: no
//! kube-apiserver binary can be installed on these machines (none in Debian, PyPI, npm or
//! crates.io). It serves the subset weft and flanneld use, answering as the real server
//! does (shapes from the Kubernetes API reference: `NodeList`, `WatchEvent`, `Status`):
//!
//! - `GET /api/v1/nodes[?limit=N[&continue=TOKEN]]`: a `NodeList` with the current
//!   `metadata.resourceVersion`, or a page of it with a `continue` token;
//! - `GET /api/v1/nodes?watch=true&resourceVersion=RV[&allowWatchBookmarks=true]
//!   [&timeoutSeconds=T]`: a chunked stream of `{"type":…,"object":…}` lines: the changes
//!   after RV (no RV or "0": `ADDED` for every node first), `BOOKMARK`s while idle when
//!   asked for, and for an RV older than the last compaction one `ERROR` event carrying a
//!   410 `Expired` Status, then the end of the stream;
//! - `GET /api/v1/nodes/NAME`, `POST /api/v1/nodes`, `DELETE /api/v1/nodes/NAME`;
//! - `POST /api/v1/namespaces/NS/pods`, `GET /api/v1/namespaces/NS/pods/NAME` (stored as
//!   given: weft reads its pod's `spec.nodeName` when NODE_NAME is not set);
//! - `PATCH /api/v1/nodes/NAME[/status]` with `application/merge-patch+json` (RFC 7386)
//!   or `application/strategic-merge-patch+json` (maps merge; `status.conditions` merge
//!   by `type`, as their patchMergeKey says; other lists replace). As on the real server
//!   the main resource ignores `status` and the status subresource ignores `spec`;
//!   `metadata` (annotations) may change through either;
//! - errors as `Status` objects: 404 `NotFound`, 409 `AlreadyExists`, 400 `BadRequest`,
//!   415 for another patch type.
//!
//! Not served: authentication, other resources, label/field selectors, server-side apply,
//! JSON patch, protobuf, discovery. Test-only control: `POST /standin/compact` forgets
//! the change log and ends open watches, as an API server restarting after an etcd
//! compaction would: clients watching again from an older resourceVersion get 410.
//!
//! Usage: `kube-api-standin ADDR [BOOKMARK_SECONDS]`; it prints `listening on ADDR`, then
//! `rbac CLIENT VERB RESOURCE` for every call (Kubernetes' authorization attributes).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

/// One change, as a watch reports it.
#[derive(Clone)]
struct Change {
    rv: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    nodes: BTreeMap<String, Value>,
    /// Pods by (namespace, name): stored and read back only (weft reads its own pod to
    /// find its node, as flanneld does without NODE_NAME).
    pods: BTreeMap<(String, String), Value>,
    log: Vec<Change>,
    /// Watches from a resourceVersion below this get 410 (and the log holds nothing
    /// older).
    compacted: u64,
    /// Bumped by a compaction: open watches end (as when the API server restarts), so
    /// their clients come back with their old resourceVersion and get 410.
    epoch: u64,
    uid: u64,
}

struct Server {
    state: Mutex<State>,
    changed: Condvar,
    bookmark_every: Duration,
}

fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

fn not_found(name: &str) -> (u16, Value) {
    (
        404,
        status(
            404,
            "NotFound",
            &format!("nodes \"{name}\" not found"),
            Some(json!({"name": name, "kind": "nodes"})),
        ),
    )
}

fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// RFC 7386 merge: objects merge key by key, `null` deletes, anything else replaces.
fn merge(target: &mut Value, patch: &Value, strategic: bool, path: &str) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        let here = format!("{path}/{k}");
        if v.is_null() {
            t.remove(k);
        } else if strategic && here == "/status/conditions" && v.is_array() {
            // patchMergeKey "type": each patched condition replaces fields of the one
            // with the same type, or is added.
            let list = t.entry(k.clone()).or_insert_with(|| json!([]));
            if !list.is_array() {
                *list = json!([]);
            }
            let items = list.as_array_mut().expect("made an array above");
            for c in v.as_array().into_iter().flatten() {
                match items.iter_mut().find(|i| i["type"] == c["type"]) {
                    Some(existing) => merge(existing, c, strategic, &here),
                    None => items.push(c.clone()),
                }
            }
        } else if v.is_object() {
            merge(
                t.entry(k.clone()).or_insert(Value::Null),
                v,
                strategic,
                &here,
            );
        } else {
            t.insert(k.clone(), v.clone());
        }
    }
}

impl Server {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, st: &mut State, kind: &'static str, object: Value) {
        st.log.push(Change {
            rv: st.rv,
            kind,
            object,
        });
        self.changed.notify_all();
    }

    fn create(&self, mut node: Value) -> (u16, Value) {
        let Some(name) = node["metadata"]["name"].as_str().map(str::to_string) else {
            return (
                400,
                status(400, "BadRequest", "metadata.name: Required value", None),
            );
        };
        let mut st = self.lock();
        if st.nodes.contains_key(&name) {
            return (
                409,
                status(
                    409,
                    "AlreadyExists",
                    &format!("nodes \"{name}\" already exists"),
                    Some(json!({"name": name, "kind": "nodes"})),
                ),
            );
        }
        st.rv += 1;
        st.uid += 1;
        node["kind"] = json!("Node");
        node["apiVersion"] = json!("v1");
        let m = &mut node["metadata"];
        m["resourceVersion"] = json!(st.rv.to_string());
        m["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", st.uid));
        m["creationTimestamp"] = json!(rfc3339_now());
        if node.get("spec").is_none() {
            node["spec"] = json!({});
        }
        if node.get("status").is_none() {
            node["status"] = json!({});
        }
        st.nodes.insert(name, node.clone());
        self.record(&mut st, "ADDED", node.clone());
        (201, node)
    }

    fn patch(&self, name: &str, sub_status: bool, ctype: &str, body: &[u8]) -> (u16, Value) {
        let strategic = match ctype {
            "application/merge-patch+json" => false,
            "application/strategic-merge-patch+json" => true,
            other => {
                return (
                    415,
                    status(
                        415,
                        "UnsupportedMediaType",
                        &format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"),
                        None,
                    ),
                )
            }
        };
        let patch: Value = match serde_json::from_slice(body) {
            Ok(p @ Value::Object(_)) => p,
            _ => {
                return (
                    400,
                    status(400, "BadRequest", "the patch is not a JSON object", None),
                )
            }
        };
        let mut st = self.lock();
        let Some(old) = st.nodes.get(name).cloned() else {
            return not_found(name);
        };
        let mut new = old.clone();
        merge(&mut new, &patch, strategic, "");
        // The main resource keeps status, the status subresource keeps spec.
        let kept = if sub_status { "spec" } else { "status" };
        new[kept] = old[kept].clone();
        for k in ["name", "uid", "creationTimestamp", "resourceVersion"] {
            new["metadata"][k] = old["metadata"][k].clone();
        }
        new["kind"] = json!("Node");
        new["apiVersion"] = json!("v1");
        if new == old {
            return (200, old);
        }
        st.rv += 1;
        new["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        st.nodes.insert(name.to_string(), new.clone());
        self.record(&mut st, "MODIFIED", new.clone());
        (200, new)
    }

    fn delete(&self, name: &str) -> (u16, Value) {
        let mut st = self.lock();
        let Some(mut node) = st.nodes.remove(name) else {
            return not_found(name);
        };
        st.rv += 1;
        node["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        self.record(&mut st, "DELETED", node);
        (
            200,
            json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "kind": "nodes", "uid": ""},
            }),
        )
    }

    /// A `NodeList`: all nodes, or with `limit` a page of them in name order, with a
    /// `continue` token while more remain (as the real server pages lists). The token
    /// carries the first page's resourceVersion, which every page reports: a client that
    /// watches from it after the last page sees every change made while it paged (the
    /// real server serves the pages from a snapshot at that version; replaying the
    /// changes instead comes to the same). A token older than the last compaction gets
    /// 410 `Expired`, as the real server's.
    fn list(&self, query: &BTreeMap<String, String>) -> (u16, Value) {
        let st = self.lock();
        let limit = query.get("limit").and_then(|v| v.parse::<usize>().ok());
        let token = query.get("continue").filter(|t| !t.is_empty());
        let (rv, after) = match token.and_then(|t| t.split_once('/')) {
            Some((rv, after)) => (rv.parse().unwrap_or(0), Some(after.to_string())),
            None if token.is_some() => {
                return (
                    400,
                    status(400, "BadRequest", "invalid continue token", None),
                )
            }
            None => (st.rv, None),
        };
        if rv < st.compacted {
            let m =
                "The provided continue parameter is too old to display a consistent list result.";
            return (410, status(410, "Expired", m, None));
        }
        let from = match &after {
            Some(a) => std::ops::Bound::Excluded(a.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let mut rest = st.nodes.range((from, std::ops::Bound::Unbounded));
        let items: Vec<Value> = rest
            .by_ref()
            .take(limit.filter(|l| *l > 0).unwrap_or(usize::MAX))
            .map(|(_, n)| n.clone())
            .collect();
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if rest.next().is_some() {
            let last = items
                .last()
                .and_then(|n| n["metadata"]["name"].as_str())
                .unwrap_or("");
            meta["continue"] = format!("{rv}/{last}").into();
        }
        (
            200,
            json!({"kind": "NodeList", "apiVersion": "v1", "metadata": meta, "items": items}),
        )
    }

    /// Answers `GET /api/v1/nodes`: a NodeList, or None once a watch streamed to `out` ended.
    fn list_or_watch(
        &self,
        out: &mut TcpStream,
        query: &BTreeMap<String, String>,
    ) -> Option<(u16, Value)> {
        let watching = matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
        if watching {
            let from = query.get("resourceVersion").and_then(|v| v.parse().ok());
            let bookmarks = query
                .get("allowWatchBookmarks")
                .is_some_and(|v| v == "true");
            let timeout = query
                .get("timeoutSeconds")
                .and_then(|v| v.parse().ok())
                .map_or(Duration::from_secs(1800), Duration::from_secs);
            self.watch(out, from, bookmarks, timeout);
            return None;
        }
        Some(self.list(query))
    }

    /// Stores a pod posted to namespace `ns` as given (`POST .../namespaces/NS/pods`).
    fn create_pod(&self, ns: &str, body: &[u8]) -> (u16, Value) {
        match serde_json::from_slice::<Value>(body) {
            Ok(mut p) => {
                let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
                let mut st = self.lock();
                st.rv += 1;
                p["kind"] = json!("Pod");
                p["apiVersion"] = json!("v1");
                p["metadata"]["namespace"] = json!(ns);
                p["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                st.pods.insert((ns.to_string(), name), p.clone());
                (201, p)
            }
            Err(e) => (400, status(400, "BadRequest", &e.to_string(), None)),
        }
    }

    /// Reads back a stored pod (`GET .../namespaces/NS/pods/NAME`), or 404.
    fn get_pod(&self, ns: &str, name: &str) -> (u16, Value) {
        match self.lock().pods.get(&(ns.to_string(), name.to_string())) {
            Some(p) => (200, p.clone()),
            None => (
                404,
                status(
                    404,
                    "NotFound",
                    &format!("pods \"{name}\" not found"),
                    Some(json!({"name": name, "kind": "pods"})),
                ),
            ),
        }
    }

    /// `POST /standin/compact`: forgets the change log and ends open watches, as etcd compacting.
    fn compact(&self) -> (u16, Value) {
        let mut st = self.lock();
        // As etcd compacting at the current revision: older ones are gone; open
        // watches end.
        st.compacted = st.rv;
        st.log.clear();
        st.epoch += 1;
        self.changed.notify_all();
        (200, json!({"compacted": st.rv}))
    }

    /// Opens a watch: 410 if compacted, else (no RV: ADDED first) the RV to follow from; or None.
    fn watch_start(&self, out: &mut TcpStream, from: Option<u64>) -> Option<u64> {
        let st = self.lock();
        match from {
            Some(rv) if rv > 0 && rv < st.compacted => {
                let e = status(
                    410,
                    "Expired",
                    &format!("too old resource version: {rv} ({})", st.compacted),
                    None,
                );
                let _ = send_event(out, json!({"type": "ERROR", "object": e}));
                let _ = out.write_all(b"0\r\n\r\n");
                None
            }
            Some(rv) if rv > 0 => Some(rv),
            _ => {
                // No resourceVersion: the current state as ADDED events first.
                let now = st.rv;
                let nodes: Vec<Value> = st.nodes.values().cloned().collect();
                drop(st);
                for n in nodes {
                    if !send_event(out, json!({"type": "ADDED", "object": n})) {
                        return None;
                    }
                }
                Some(now)
            }
        }
    }

    /// Waits for changes after `seen`, a due bookmark or the end; None (stream ended): compacted.
    fn watch_wait(
        &self,
        out: &mut TcpStream,
        epoch: u64,
        seen: u64,
        bookmarks: bool,
        last_sent: Instant,
        end: Instant,
    ) -> Option<Vec<Change>> {
        let mut st = self.lock();
        loop {
            if st.epoch != epoch {
                drop(st);
                let _ = out.write_all(b"0\r\n\r\n");
                return None;
            }
            let p: Vec<Change> = st.log.iter().filter(|c| c.rv > seen).cloned().collect();
            let now = Instant::now();
            let bookmark_due = bookmarks && now >= last_sent + self.bookmark_every;
            if !p.is_empty() || bookmark_due || now >= end {
                break Some(p);
            }
            let wake = (last_sent + self.bookmark_every).min(end);
            st = self
                .changed
                .wait_timeout(
                    st,
                    wake.saturating_duration_since(now)
                        .max(Duration::from_millis(5)),
                )
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Streams a watch to `out` until it ends (timeout, 410, or the client goes away).
    fn watch(&self, out: &mut TcpStream, from: Option<u64>, bookmarks: bool, timeout: Duration) {
        let end = Instant::now() + timeout;
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache, private\r\n\r\n";
        if out.write_all(head.as_bytes()).is_err() {
            return;
        }
        let Some(mut seen) = self.watch_start(out, from) else {
            return;
        };
        let mut last_sent = Instant::now();
        let epoch = self.lock().epoch;
        loop {
            let Some(pending) = self.watch_wait(out, epoch, seen, bookmarks, last_sent, end) else {
                return;
            };
            for c in &pending {
                if !send_event(out, json!({"type": c.kind, "object": c.object})) {
                    return;
                }
                seen = c.rv;
            }
            if pending.is_empty() && bookmarks && Instant::now() >= last_sent + self.bookmark_every
            {
                let rv = self.lock().rv;
                seen = seen.max(rv);
                let b = json!({"type": "BOOKMARK", "object": {"kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}}});
                if !send_event(out, b) {
                    return;
                }
            }
            if !pending.is_empty() || bookmarks {
                last_sent = Instant::now();
            }
            if Instant::now() >= end {
                let _ = out.write_all(b"0\r\n\r\n");
                return;
            }
        }
    }
}

/// Writes one watch event to `out` as a chunk of its own line; false once the client is gone.
fn send_event(out: &mut TcpStream, ev: Value) -> bool {
    let mut line = ev.to_string();
    line.push('\n');
    write!(out, "{:x}\r\n{line}\r\n", line.len()).is_ok() && out.flush().is_ok()
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Vec<u8>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let (mut content_length, mut content_type) = (0usize, String::new());
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => content_length = v.trim().parse().ok()?,
                "content-type" => {
                    content_type = v.split(';').next().unwrap_or("").trim().to_string()
                }
                _ => {}
            }
        }
    }
    let mut body = vec![0; content_length];
    r.read_exact(&mut body).ok()?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decoded(v)))
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        query,
        content_type,
        body,
    })
}

/// A query value with its `%XX` escapes (and `+`) decoded, as the real server reads it.
fn percent_decoded(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(c)) => {
                out.push(c);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(out: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        415 => "Unsupported Media Type",
        _ => "Error",
    };
    let b = body.to_string();
    write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
        b.len()
    )?;
    out.flush()
}

/// The RBAC verb and resource of a request (Kubernetes' authorization attributes).
fn rbac(
    method: &str,
    segs: &[&str],
    query: &BTreeMap<String, String>,
) -> Option<(&'static str, String)> {
    let watch = matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
    Some(match (method, segs) {
        ("GET", ["api", "v1", "nodes"]) if watch => ("watch", "nodes".into()),
        ("GET", ["api", "v1", "nodes"]) => ("list", "nodes".into()),
        ("GET", ["api", "v1", "nodes", _]) => ("get", "nodes".into()),
        ("POST", ["api", "v1", "nodes"]) => ("create", "nodes".into()),
        ("DELETE", ["api", "v1", "nodes", _]) => ("delete", "nodes".into()),
        ("PATCH", ["api", "v1", "nodes", _]) => ("patch", "nodes".into()),
        ("PATCH", ["api", "v1", "nodes", _, sub]) => ("patch", format!("nodes/{sub}")),
        ("GET", ["api", "v1", "namespaces", _, "pods", _]) => ("get", "pods".into()),
        ("POST", ["api", "v1", "namespaces", _, "pods"]) => ("create", "pods".into()),
        _ => return None,
    })
}

fn serve(server: Arc<Server>, conn: TcpStream) {
    let mut out = match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    };
    let peer = out
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let mut r = BufReader::new(conn);
    while let Some(req) = read_request(&mut r) {
        let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
        // Each call as RBAC sees it (client, verb, resource), so tests can check that the
        // manifest's ClusterRole grants what clients really do.
        if let Some((verb, resource)) = rbac(&req.method, &segs, &req.query) {
            println!("rbac {peer} {verb} {resource}");
        }
        let (code, body) = match (req.method.as_str(), segs.as_slice()) {
            ("GET", ["api", "v1", "nodes"]) => match server.list_or_watch(&mut out, &req.query) {
                Some(answer) => answer,
                None => return,
            },
            ("GET", ["api", "v1", "nodes", name]) => match server.lock().nodes.get(*name) {
                Some(n) => (200, n.clone()),
                None => not_found(name),
            },
            ("POST", ["api", "v1", "nodes"]) => match serde_json::from_slice(&req.body) {
                Ok(n) => server.create(n),
                Err(e) => (400, status(400, "BadRequest", &e.to_string(), None)),
            },
            ("DELETE", ["api", "v1", "nodes", name]) => server.delete(name),
            ("PATCH", ["api", "v1", "nodes", name]) => {
                server.patch(name, false, &req.content_type, &req.body)
            }
            ("PATCH", ["api", "v1", "nodes", name, "status"]) => {
                server.patch(name, true, &req.content_type, &req.body)
            }
            ("POST", ["api", "v1", "namespaces", ns, "pods"]) => server.create_pod(ns, &req.body),
            ("GET", ["api", "v1", "namespaces", ns, "pods", name]) => server.get_pod(ns, name),
            ("POST", ["standin", "compact"]) => server.compact(),
            _ => (
                404,
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                    None,
                ),
            ),
        };
        if respond(&mut out, code, &body).is_err() {
            return;
        }
    }
}

/// Serves on `listener` forever (one thread per connection), with a bookmark on idle
/// watches that asked for them every `bookmark_every`.
pub fn run(listener: TcpListener, bookmark_every: Duration) {
    let server = Arc::new(Server {
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
        bookmark_every,
    });
    for conn in listener.incoming().flatten() {
        let s = server.clone();
        std::thread::spawn(move || serve(s, conn));
    }
}

#[allow(dead_code)] // The tests include this file for `run`.
fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:6443".into());
    let bookmark_every =
        Duration::from_secs(args.next().and_then(|s| s.parse().ok()).unwrap_or(60));
    let listener = TcpListener::bind(&addr).unwrap_or_else(|e| {
        eprintln!("kube-api-standin: cannot listen on {addr}: {e}");
        std::process::exit(1)
    });
    println!(
        "listening on {}",
        listener.local_addr().map(|a| a.to_string()).unwrap_or(addr)
    );
    run(listener, bookmark_every);
}
