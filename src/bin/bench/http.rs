//! `--http`: the lock loop over the HTTP REST front (spec/http.md), one session and one
//! keep-alive HTTP/1.1 connection per worker, through a minimal hand-written client
//! (`Content-Length` bodies only). Non-2xx answers and acquire timeouts are counted, not fatal.

use std::fmt;
use std::io::Write as _;
use std::time::Instant;

use crate::args::Config;
use crate::line::{show_reply, BenchError, Transport, READ_CHUNK};
use crate::lock_loop::{elapsed_ns, Failures, Gate, WorkerOutcome};

/// Longest response head (status line and headers) we accept.
const MAX_HTTP_HEAD: usize = 16 * 1024;
/// Longest response body we accept; the API answers with small JSON objects.
const MAX_HTTP_BODY: usize = 1024 * 1024;

/// Why a response cannot be read. The server is a peer: nothing it sends panics the bench.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HttpError {
    HeadTooLong,
    BadStatusLine(String),
    BadHeader(String),
    BadContentLength(String),
    BodyTooLong(usize),
    /// A `Transfer-Encoding` (chunked or any other): this client reads `Content-Length`
    /// bodies only, which is what the server sends.
    TransferEncoding(String),
    /// A response with a body but no `Content-Length` (it would end at the close).
    NoLength,
    /// A 1xx response: we never send `Expect`, so none should come.
    Interim(u16),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::HeadTooLong => write!(f, "response head longer than {MAX_HTTP_HEAD} bytes"),
            HttpError::BadStatusLine(line) => write!(f, "malformed status line {line}"),
            HttpError::BadHeader(line) => write!(f, "malformed header line {line}"),
            HttpError::BadContentLength(v) => write!(f, "unusable Content-Length {v}"),
            HttpError::BodyTooLong(n) => {
                write!(f, "response body of {n} bytes, more than {MAX_HTTP_BODY}")
            }
            HttpError::TransferEncoding(v) => {
                write!(
                    f,
                    "Transfer-Encoding {v} is not supported (Content-Length only)"
                )
            }
            HttpError::NoLength => write!(f, "response body without Content-Length"),
            HttpError::Interim(code) => write!(f, "unexpected interim response {code}"),
        }
    }
}

/// One parsed response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    /// The server closes the connection after this response.
    pub(crate) close: bool,
    pub(crate) body: Vec<u8>,
}

/// Parses the response at the start of `buf`: `Ok(None)` while it is incomplete, else the
/// response and the number of bytes it took (a push parser, like the reply `LineBuf`).
pub(crate) fn parse_response(buf: &[u8]) -> Result<Option<(HttpResponse, usize)>, HttpError> {
    // Fail at once on a peer that does not speak HTTP (the line-protocol port, say) rather
    // than wait for a blank line that never comes.
    let prefix = buf.len().min(5);
    if buf[..prefix] != b"HTTP/"[..prefix] {
        let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
        return Err(HttpError::BadStatusLine(show_reply(line)));
    }
    let Some(head_len) = find_head_end(buf) else {
        if buf.len() > MAX_HTTP_HEAD + 3 {
            return Err(HttpError::HeadTooLong);
        }
        return Ok(None);
    };
    if head_len > MAX_HTTP_HEAD {
        return Err(HttpError::HeadTooLong);
    }
    let mut lines = buf[..head_len]
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let (http10, status) = parse_status_line(status_line)
        .ok_or_else(|| HttpError::BadStatusLine(show_reply(status_line)))?;
    if (100..200).contains(&status) {
        return Err(HttpError::Interim(status));
    }
    let mut content_length: Option<usize> = None;
    let (mut close, mut keep_alive) = (false, false);
    for line in lines {
        let bad = || HttpError::BadHeader(show_reply(line));
        let colon = line.iter().position(|&b| b == b':').ok_or_else(bad)?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.is_empty()
            || name
                .iter()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad());
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| HttpError::BadContentLength(show_reply(value)))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(HttpError::BadContentLength(show_reply(value)));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if !value.eq_ignore_ascii_case(b"identity") {
                return Err(HttpError::TransferEncoding(show_reply(value)));
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let body_len = match (status, content_length) {
        (204 | 304, _) => 0,
        (_, Some(n)) if n > MAX_HTTP_BODY => return Err(HttpError::BodyTooLong(n)),
        (_, Some(n)) => n,
        (_, None) => return Err(HttpError::NoLength),
    };
    let body_start = head_len + 4;
    let Some(body) = buf.get(body_start..body_start + body_len) else {
        return Ok(None);
    };
    let response = HttpResponse {
        status,
        close: close || (http10 && !keep_alive),
        body: body.to_vec(),
    };
    Ok(Some((response, body_start + body_len)))
}

/// Where the blank line that ends a response head starts: the first `\r\n\r\n`, found by
/// jumping from `\n` to `\n` (a byte-window scan was a visible part of the client's time).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let nl = from + i;
        if nl >= 1 && buf[nl - 1] == b'\r' && buf.get(nl + 1..nl + 3) == Some(&b"\r\n"[..]) {
            return Some(nl - 1);
        }
        from = nl + 1;
    }
    None
}

/// `HTTP/1.x NNN [reason]` → (is HTTP/1.0, status).
fn parse_status_line(line: &[u8]) -> Option<(bool, u16)> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let (&minor, rest) = rest.split_first()?;
    let rest = rest.strip_prefix(b" ")?;
    let (code, reason) = match rest.iter().position(|&b| b == b' ') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    if !matches!(minor, b'0' | b'1')
        || code.len() != 3
        || !code.iter().all(u8::is_ascii_digit)
        || reason.is_some_and(|r| r.iter().any(|&b| b.is_ascii_control() && b != b'\t'))
    {
        return None;
    }
    let status = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    (100..=599)
        .contains(&status)
        .then_some((minor == b'0', status))
}

/// A key as one path segment: everything but RFC 3986 unreserved bytes percent-encoded.
fn encode_path_segment(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Appends a `POST` with a JSON body (possibly empty), written straight into `out`
/// (no intermediate strings: the bench client should not be what the HTTP run measures).
pub(crate) fn push_http_post(
    out: &mut Vec<u8>,
    host: &str,
    path: &str,
    session: Option<&str>,
    bearer: Option<&str>,
    body: &[u8],
) {
    let mut put = |parts: &[&[u8]]| parts.iter().for_each(|p| out.extend_from_slice(p));
    put(&[
        b"POST ",
        path.as_bytes(),
        b" HTTP/1.1\r\nHost: ",
        host.as_bytes(),
        b"\r\n",
    ]);
    if let Some(session) = session {
        put(&[b"X-Dflockd-Session: ", session.as_bytes(), b"\r\n"]);
    }
    if let Some(token) = bearer {
        put(&[b"Authorization: Bearer ", token.as_bytes(), b"\r\n"]);
    }
    put(&[b"Content-Type: application/json\r\nContent-Length: "]);
    // Writing into a Vec cannot fail, and `{}` of an integer allocates nothing.
    let _ = write!(out, "{}\r\n\r\n", body.len());
    out.extend_from_slice(body);
}

/// A response shown in a failure count: status and the start of the body.
pub(crate) fn show_response(what: &str, response: &HttpResponse) -> String {
    format!(
        "{what}: HTTP {} {}",
        response.status,
        show_reply(response.body.trim_ascii_end())
    )
}

/// An acquire answer, borrowed from the body (only the fields the bench reads).
#[derive(serde::Deserialize)]
struct AcquireAnswer<'a> {
    #[serde(borrow)]
    status: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    token: Option<std::borrow::Cow<'a, str>>,
}

/// The token of an acquire answer `{"status":"ok","token":...}`, written as the release body
/// `{"token":...}` into `release` (cleared first); anything else (a `{"status":"timeout"}`
/// included) is a failure to count.
fn parse_acquired(body: &[u8], release: &mut Vec<u8>) -> Result<(), String> {
    let answer: AcquireAnswer<'_> = serde_json::from_slice(body)
        .map_err(|e| format!("acquire: unreadable body {} ({e})", show_reply(body)))?;
    match (&*answer.status, answer.token) {
        ("ok", Some(token)) => {
            release.clear();
            release.extend_from_slice(b"{\"token\":");
            serde_json::to_writer(&mut *release, &*token)
                .map_err(|e| format!("acquire: token not writable ({e})"))?;
            release.push(b'}');
            Ok(())
        }
        ("timeout", _) => Err("acquire: timeout".to_string()),
        _ => Err(format!("acquire: unexpected body {}", show_reply(body))),
    }
}

/// One keep-alive HTTP/1.1 connection and the session it works in; reconnects after a
/// response that announced a close.
pub(crate) struct HttpClient<'a, T> {
    addr: &'a str,
    cfg: &'a Config,
    io: Option<T>,
    /// Unparsed response bytes.
    inbuf: Vec<u8>,
    chunk: Box<[u8]>,
    out: Vec<u8>,
    session: String,
    /// The release body of the current op.
    release: Vec<u8>,
}

impl<'a, T: Transport> HttpClient<'a, T> {
    pub(crate) fn new(addr: &'a str, cfg: &'a Config) -> Self {
        HttpClient {
            addr,
            cfg,
            io: None,
            inbuf: Vec::with_capacity(READ_CHUNK),
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            out: Vec::with_capacity(1024),
            session: String::new(),
            release: Vec::with_capacity(64),
        }
    }

    /// Sends one `POST` and reads its response.
    pub(crate) async fn post(
        &mut self,
        path: &str,
        with_session: bool,
        body: &[u8],
    ) -> Result<HttpResponse, BenchError> {
        let io = match &mut self.io {
            Some(io) => io,
            None => {
                let io = T::connect(self.addr, self.cfg.reply_deadline())
                    .await
                    .map_err(|source| BenchError::Connect {
                        addr: self.addr.to_string(),
                        source,
                    })?;
                self.inbuf.clear();
                self.io.insert(io)
            }
        };
        self.out.clear();
        let session = with_session.then_some(self.session.as_str());
        let bearer = self.cfg.auth_token.as_deref();
        push_http_post(&mut self.out, self.addr, path, session, bearer, body);
        io.write_all(&self.out).await?;
        loop {
            match parse_response(&self.inbuf).map_err(|e| BenchError::Http(e.to_string()))? {
                Some((response, used)) => {
                    self.inbuf.drain(..used);
                    if response.close {
                        self.io = None;
                    }
                    return Ok(response);
                }
                None => {
                    let n = io.read(&mut self.chunk).await?;
                    if n == 0 {
                        return Err(BenchError::Closed);
                    }
                    self.inbuf.extend_from_slice(&self.chunk[..n]);
                }
            }
        }
    }

    /// `POST /v1/sessions`; without a session nothing else can be measured.
    async fn open_session(&mut self) -> Result<(), BenchError> {
        let response = self.post("/v1/sessions", false, b"").await?;
        let id = (response.status == 200)
            .then(|| serde_json::from_slice::<serde_json::Value>(&response.body).ok())
            .flatten()
            .and_then(|v| v.get("session_id")?.as_str().map(str::to_string))
            .ok_or_else(|| BenchError::Http(show_response("create session", &response)))?;
        self.session = id;
        Ok(())
    }
}

pub(crate) async fn http_worker<T: Transport>(
    id: usize,
    cfg: &Config,
    gate: &Gate,
    addr: &str,
) -> Result<WorkerOutcome, BenchError> {
    let mut http = HttpClient::<T>::new(addr, cfg);
    http.open_session().await?;
    let key = encode_path_segment(&cfg.worker_key(id));
    let paths = (
        format!("/v1/locks/{key}"),
        format!("/v1/locks/{key}/release"),
    );
    let acquire_body = if cfg.lease_s > 0 {
        format!(
            "{{\"acquire_timeout_s\":{},\"lease_ttl_s\":{}}}",
            cfg.timeout_s, cfg.lease_s
        )
    } else {
        format!("{{\"acquire_timeout_s\":{}}}", cfg.timeout_s)
    };
    let mut latencies_ns = Vec::with_capacity(cfg.rounds.max(cfg.warmup));
    let mut failures = Failures::default();
    for (measured, phase_ops) in [(false, cfg.warmup), (true, cfg.rounds)] {
        if measured {
            gate.pass().await;
        }
        latencies_ns.clear();
        failures = Failures::default();
        for _ in 0..phase_ops {
            let t0 = Instant::now();
            match http_lock_op(&mut http, &paths, acquire_body.as_bytes()).await? {
                Ok(()) => latencies_ns.push(elapsed_ns(t0, Instant::now())),
                Err(what) => failures.add(what),
            }
        }
    }
    Ok(WorkerOutcome {
        latencies_ns,
        finished: Instant::now(),
        failures,
    })
}

/// One acquire + release. `Ok(Err(_))` is a failed op to count (a non-2xx answer, an acquire
/// timeout); a `410 session_gone` also opens a new session so the next op can succeed.
async fn http_lock_op<T: Transport>(
    http: &mut HttpClient<'_, T>,
    (acquire_path, release_path): &(String, String),
    acquire_body: &[u8],
) -> Result<Result<(), String>, BenchError> {
    let response = http.post(acquire_path, true, acquire_body).await?;
    if response.status != 200 {
        if response.status == 410 {
            http.open_session().await?;
        }
        return Ok(Err(show_response("acquire", &response)));
    }
    // The release body is written into a buffer the client keeps, taken out for the call.
    let mut release = std::mem::take(&mut http.release);
    if let Err(what) = parse_acquired(&response.body, &mut release) {
        http.release = release;
        return Ok(Err(what));
    }
    let response = http.post(release_path, true, &release).await;
    http.release = release;
    let response = response?;
    if !(200..300).contains(&response.status) {
        if response.status == 410 {
            http.open_session().await?;
        }
        return Ok(Err(show_response("release", &response)));
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(raw: &[u8]) -> Result<Option<(HttpResponse, usize)>, HttpError> {
        parse_response(raw)
    }

    #[test]
    fn http_response_with_content_length() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\":true}\nHTTP/1.1 204 No Content\r\n\r\n";
        let (first, used) = response(raw).unwrap().unwrap();
        assert_eq!(
            first,
            HttpResponse {
                status: 200,
                close: false,
                body: b"{\"a\":true}\n".to_vec()
            }
        );
        // Pipelined responses come out one at a time; a 204 has no body.
        let (second, used2) = response(&raw[used..]).unwrap().unwrap();
        assert_eq!((second.status, second.body.len()), (204, 0));
        assert_eq!(used + used2, raw.len());
    }

    #[test]
    fn http_response_incomplete_needs_more() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody";
        for cut in 0..raw.len() {
            assert_eq!(response(&raw[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(response(raw).unwrap().is_some());
    }

    #[test]
    fn http_connection_close_is_noticed() {
        let close = b"HTTP/1.1 503 Service Unavailable\r\nConnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n";
        assert!(response(close).unwrap().unwrap().0.close);
        let http10 = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(response(http10).unwrap().unwrap().0.close);
        let http10_keep = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
        assert!(!response(http10_keep).unwrap().unwrap().0.close);
    }

    #[test]
    fn http_chunked_and_lengthless_bodies_are_refused() {
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n";
        assert!(matches!(
            response(chunked),
            Err(HttpError::TransferEncoding(_))
        ));
        let no_length = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nbody";
        assert_eq!(response(no_length), Err(HttpError::NoLength));
        let too_big = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_HTTP_BODY + 1
        );
        assert_eq!(
            response(too_big.as_bytes()),
            Err(HttpError::BodyTooLong(MAX_HTTP_BODY + 1))
        );
    }

    #[test]
    fn http_malformed_heads_are_errors() {
        for bad in [
            &b"error\n"[..],
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1  200 OK\r\n\r\n",
            b"HTTP/1.1 099 Low\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n folded: value\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 100 Continue\r\n\r\n",
        ] {
            assert!(response(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // Status line with no reason phrase is fine; a repeated equal length too.
        let ok = b"HTTP/1.1 404\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(response(ok).unwrap().unwrap().0.status, 404);
        // A prefix of "HTTP/" may still become a response; anything else cannot.
        assert_eq!(response(b"HT"), Ok(None));
        assert!(response(b"HH").is_err());
        let mut huge = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        huge.resize(MAX_HTTP_HEAD + 10, b'x');
        assert_eq!(response(&huge), Err(HttpError::HeadTooLong));
    }

    #[test]
    fn http_requests_and_paths() {
        let mut out = Vec::new();
        push_http_post(
            &mut out,
            "h:1",
            "/v1/locks/k",
            Some("abc"),
            Some("tok"),
            b"{}",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1/locks/k HTTP/1.1\r\nHost: h:1\r\nX-Dflockd-Session: abc\r\n\
             Authorization: Bearer tok\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\n\r\n{}"
        );
        assert_eq!(encode_path_segment("bench_7"), "bench_7");
        assert_eq!(encode_path_segment("a/b%c?d#é"), "a%2Fb%25c%3Fd%23%C3%A9");
    }

    #[test]
    fn acquire_bodies() {
        let mut release = b"stale".to_vec();
        assert_eq!(
            parse_acquired(
                br#"{"lease_ttl_s":10,"status":"ok","token":"t1"}"#,
                &mut release
            ),
            Ok(())
        );
        assert_eq!(release, br#"{"token":"t1"}"#);
        // A token that needs escaping is escaped, not pasted.
        parse_acquired(br#"{"status":"ok","token":"a\"b"}"#, &mut release).unwrap();
        assert_eq!(release, br#"{"token":"a\"b"}"#);
        assert_eq!(
            parse_acquired(br#"{"status":"timeout"}"#, &mut release),
            Err("acquire: timeout".to_string())
        );
        assert!(parse_acquired(br#"{"status":"ok"}"#, &mut release).is_err());
        assert!(parse_acquired(br#"{"status":"ok","token":7}"#, &mut release).is_err());
        assert!(parse_acquired(b"not json", &mut release).is_err());
    }

    #[test]
    fn head_end_is_the_first_blank_line() {
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r\nbody"), Some(15));
        assert_eq!(
            find_head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n\r\n"),
            Some(21)
        );
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\n\r\n"), None);
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\n\r"), None);
        assert_eq!(find_head_end(b"\n\r\n"), None);
        assert_eq!(find_head_end(b""), None);
    }
}
