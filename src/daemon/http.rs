//! HTTP/1.1 requests as the daemon's API reads them (RFC 9112), as pure functions of the bytes
//! received so far: [`parse_head`] for the request line and header fields, [`BodyReader`]
//! for the body (Content-Length or chunked), and [`parse_request`] for a whole request (what
//! a fuzzer calls). Every malformed input is an [`HttpError`] carrying the status to answer
//! with; input that is merely short is [`HttpError::Incomplete`].
//!
//! Strict where leniency lets two readers disagree about where a request ends: a request with
//! both Content-Length and Transfer-Encoding, differing Content-Lengths, a transfer coding
//! other than a final `chunked`, whitespace before a field's colon, folded field lines and
//! bare CRs are refused. A bare LF ends a line, as RFC 9112 §2.2 allows.

/// Request line and header fields together, at most.
pub const MAX_HEAD: usize = 64 << 10;
/// A body, at most (a spec of 10,000 VMs is a few megabytes).
pub const MAX_BODY: usize = 16 << 20;
const MAX_FIELDS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("the request is not complete")]
    Incomplete,
    #[error("bad request line: {0}")]
    RequestLine(String),
    #[error("HTTP version {0} is not supported (HTTP/1.1 is)")]
    Version(String),
    #[error("bad header field line: {0}")]
    Field(String),
    #[error("the request's header is larger than {MAX_HEAD} bytes or {MAX_FIELDS} fields")]
    HeadTooLarge,
    #[error("Content-Length and Transfer-Encoding together: the body's length is ambiguous")]
    Ambiguous,
    #[error("bad Content-Length: {0}")]
    ContentLength(String),
    #[error("bad Transfer-Encoding: {0}")]
    TransferEncoding(String),
    #[error("transfer coding '{0}' is not supported (chunked is)")]
    Coding(String),
    #[error("bad chunked body: {0}")]
    Chunk(String),
    #[error("the body is larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("an HTTP/1.1 request needs exactly one Host field")]
    Host,
    #[error("expectation '{0}' is not supported (100-continue is)")]
    Expectation(String),
}

impl HttpError {
    /// The status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Incomplete => 400,
            HttpError::Version(_) => 505,
            HttpError::HeadTooLarge => 431,
            HttpError::Coding(_) => 501,
            HttpError::BodyTooLarge => 413,
            HttpError::Expectation(_) => 417,
            _ => 400,
        }
    }
}

/// How the body's end is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (neither Content-Length nor Transfer-Encoding).
    None,
    Length(usize),
    Chunked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The request target as sent: path and query.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Field names lowercased, values without surrounding whitespace, in order.
    pub fields: Vec<(String, String)>,
    pub framing: Framing,
    /// `Expect: 100-continue`: the client waits for an interim answer before the body.
    pub expect_continue: bool,
}

impl Head {
    /// The first value of field `name` (lowercase).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub head: Head,
    pub body: Vec<u8>,
}

/// A whole request from `buf`: the request and how many bytes of `buf` it took.
pub fn parse_request(buf: &[u8]) -> Result<(Request, usize), HttpError> {
    let (head, n) = parse_head(buf)?;
    let mut body = BodyReader::new(head.framing);
    let used = body.advance(&buf[n..])?;
    if !body.done() {
        return Err(HttpError::Incomplete);
    }
    Ok((
        Request {
            head,
            body: body.into_body(),
        },
        n + used,
    ))
}

/// Empty lines before a request line that are skipped (RFC 9112 §2.2 asks for at least one).
const MAX_LEADING: usize = 64;

/// Where the head ends in `buf` (the index after the empty line that follows the request
/// line and fields), if it has ended; a run of [`MAX_LEADING`] line ends with no request
/// line counts as a (bad) head. `from` is where to start looking: bytes before it were looked
/// at already (a reader calls this as bytes arrive, and must not scan the head again).
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let crlf = |b: &u8| *b == b'\r' || *b == b'\n';
    let Some(first) = buf.iter().take(MAX_LEADING).position(|b| !crlf(b)) else {
        return (buf.len() >= MAX_LEADING).then_some(MAX_LEADING);
    };
    let mut i = from.saturating_sub(3).max(first);
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let lf = i + off;
        // The line this LF ends is empty ("\n" or "\r\n" right after another LF). The byte
        // at `first` is no line end, so that LF ends the request line or a field line.
        let empty = match buf[lf - 1] {
            b'\n' => true,
            b'\r' => buf[lf - 2] == b'\n',
            _ => false,
        };
        if empty {
            return Some(lf + 1);
        }
        i = lf + 1;
    }
    None
}

/// The head (request line and fields) at the start of `buf`, and its length.
pub fn parse_head(buf: &[u8]) -> Result<(Head, usize), HttpError> {
    let Some(end) = head_end(buf, 0) else {
        return Err(if buf.len() > MAX_HEAD {
            HttpError::HeadTooLarge
        } else {
            HttpError::Incomplete
        });
    };
    if end > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let mut lines = lines(&buf[..end])?.into_iter().skip_while(|l| l.is_empty());
    let request_line = lines
        .next()
        .ok_or_else(|| HttpError::RequestLine("only empty lines".into()))?;
    let (method, target, minor) = request_line_parts(request_line)?;
    let mut fields = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if fields.len() == MAX_FIELDS {
            return Err(HttpError::HeadTooLarge);
        }
        fields.push(field(line)?);
    }
    let framing = framing(&fields, minor)?;
    let hosts = fields.iter().filter(|(k, _)| k == "host").count();
    if minor == 1 && hosts != 1 {
        return Err(HttpError::Host);
    }
    let mut expect_continue = false;
    for (_, v) in fields.iter().filter(|(k, _)| k == "expect") {
        if v.eq_ignore_ascii_case("100-continue") {
            expect_continue = true;
        } else {
            return Err(HttpError::Expectation(printable(v.as_bytes())));
        }
    }
    Ok((
        Head {
            method,
            target,
            minor,
            fields,
            framing,
            expect_continue,
        },
        end,
    ))
}

/// The lines of a head, without their terminators; a CR anywhere but before the LF is an
/// error (a bare CR is a line break to some readers and not to others).
fn lines(head: &[u8]) -> Result<Vec<&[u8]>, HttpError> {
    let mut out = Vec::new();
    for raw in head.split_inclusive(|&b| b == b'\n') {
        let line = raw.strip_suffix(b"\n").unwrap_or(raw);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.contains(&b'\r') {
            return Err(HttpError::Field(format!(
                "a bare CR in '{}'",
                printable(line)
            )));
        }
        out.push(line);
    }
    Ok(out)
}

/// A byte string for an error message: control and non-ASCII bytes escaped, at most 80.
fn printable(b: &[u8]) -> String {
    let s: String = b
        .iter()
        .take(80)
        .flat_map(|&c| std::ascii::escape_default(c))
        .map(char::from)
        .collect();
    if b.len() > 80 { s + "..." } else { s }
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn request_line_parts(line: &[u8]) -> Result<(String, String, u8), HttpError> {
    let bad = |why: &str| HttpError::RequestLine(format!("{why}: '{}'", printable(line)));
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(bad("not METHOD TARGET VERSION, separated by single spaces"));
    };
    if method.is_empty() || !method.iter().all(|&c| is_tchar(c)) {
        return Err(bad("bad method"));
    }
    if target.first() != Some(&b'/') || !target.iter().all(|&c| (0x21..0x7f).contains(&c)) {
        return Err(bad("the target must be a path (origin form)"));
    }
    let minor = match version {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            return Err(HttpError::Version(printable(&version[5..])));
        }
        _ => return Err(bad("bad HTTP version")),
    };
    // Only checked bytes: ASCII.
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((text(method), text(target), minor))
}

/// One field line: the name lowercased and the value without surrounding whitespace.
fn field(line: &[u8]) -> Result<(String, String), HttpError> {
    let bad = |why: &str| HttpError::Field(format!("{why}: '{}'", printable(line)));
    if line.first().is_some_and(|c| *c == b' ' || *c == b'\t') {
        return Err(bad("a folded line (obsolete line folding is refused)"));
    }
    let colon = line
        .iter()
        .position(|&c| c == b':')
        .ok_or_else(|| bad("no colon"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&c| is_tchar(c)) {
        return Err(bad("bad field name (no whitespace before the colon)"));
    }
    // Field values: visible characters, spaces and tabs, and obs-text (0x80-0xff).
    if value.iter().any(|&c| c != b'\t' && (c < 0x20 || c == 0x7f)) {
        return Err(bad("a control character in the value"));
    }
    let value = value.trim_ascii();
    Ok((
        String::from_utf8_lossy(name).to_ascii_lowercase(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// The body's framing from the fields (RFC 9112 §6).
fn framing(fields: &[(String, String)], minor: u8) -> Result<Framing, HttpError> {
    let values = |name: &str| -> Vec<&str> {
        fields
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .collect()
    };
    let te = values("transfer-encoding");
    let cl = values("content-length");
    let has = |name: &str| fields.iter().any(|(k, _)| k == name);
    if has("transfer-encoding") {
        if has("content-length") {
            return Err(HttpError::Ambiguous);
        }
        if minor == 0 {
            return Err(HttpError::TransferEncoding(
                "not allowed in an HTTP/1.0 request".into(),
            ));
        }
        let Some((last, before)) = te.split_last() else {
            return Err(HttpError::TransferEncoding("empty".into()));
        };
        if let Some(c) = before.iter().find(|c| c.eq_ignore_ascii_case("chunked")) {
            return Err(HttpError::TransferEncoding(format!(
                "'{c}' before another coding: chunked must be last, and only once"
            )));
        }
        if !last.eq_ignore_ascii_case("chunked") {
            return Err(if last.is_empty() || !last.bytes().all(is_tchar) {
                HttpError::TransferEncoding(format!("'{}'", printable(last.as_bytes())))
            } else {
                HttpError::Coding(last.to_string())
            });
        }
        if let Some(c) = before.first() {
            return Err(HttpError::Coding(c.to_string()));
        }
        return Ok(Framing::Chunked);
    }
    if !has("content-length") {
        return Ok(Framing::None);
    }
    let mut length = None;
    for v in cl {
        if v.is_empty() || v.len() > 19 || !v.bytes().all(|c| c.is_ascii_digit()) {
            return Err(HttpError::ContentLength(format!(
                "'{}'",
                printable(v.as_bytes())
            )));
        }
        let n: u64 = v.parse().expect("at most 19 digits");
        if length.is_some_and(|l| l != n) {
            return Err(HttpError::ContentLength("differing values".into()));
        }
        length = Some(n);
    }
    let n = length.expect("at least one value");
    if n > MAX_BODY as u64 {
        return Err(HttpError::BodyTooLarge);
    }
    Ok(Framing::Length(n as usize))
}

/// Reads a body as its bytes arrive: [`BodyReader::advance`] takes everything received
/// after the head so far (each call the same bytes plus what came since) and goes on from
/// where it stopped, so a body is looked at once however it is split.
#[derive(Debug)]
pub struct BodyReader {
    framing: Framing,
    body: Vec<u8>,
    /// Bytes of the input consumed so far.
    pos: usize,
    done: bool,
}

impl BodyReader {
    pub fn new(framing: Framing) -> BodyReader {
        BodyReader {
            framing,
            body: Vec::new(),
            pos: 0,
            done: framing == Framing::None || framing == Framing::Length(0),
        }
    }

    pub fn done(&self) -> bool {
        self.done
    }

    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Goes on with `input` (all the bytes after the head received so far). Returns how many
    /// of them the body took; [`BodyReader::done`] says whether it is complete.
    pub fn advance(&mut self, input: &[u8]) -> Result<usize, HttpError> {
        if self.done {
            return Ok(self.pos);
        }
        match self.framing {
            Framing::None => {}
            Framing::Length(n) => {
                if input.len() >= n {
                    self.body = input[..n].to_vec();
                    self.pos = n;
                    self.done = true;
                }
            }
            Framing::Chunked => {
                while !self.done {
                    match self.chunk(&input[self.pos..])? {
                        Some(used) => self.pos += used,
                        None => break,
                    }
                }
            }
        }
        Ok(self.pos)
    }

    /// One chunk (or the last chunk and the trailer section) from the start of `input`: the
    /// bytes it took, `None` if it has not all arrived.
    fn chunk(&mut self, input: &[u8]) -> Result<Option<usize>, HttpError> {
        let Some(lf) = input.iter().position(|&b| b == b'\n') else {
            return if input.len() > 1024 {
                Err(HttpError::Chunk(
                    "a chunk size line longer than 1 KiB".into(),
                ))
            } else {
                Ok(None)
            };
        };
        if lf > 1024 {
            return Err(HttpError::Chunk(
                "a chunk size line longer than 1 KiB".into(),
            ));
        }
        let size = chunk_size(&input[..lf])?;
        let data_start = lf + 1;
        if size == 0 {
            return Ok(self.trailers(&input[data_start..])?.map(|n| {
                self.done = true;
                data_start + n
            }));
        }
        if self.body.len() + size > MAX_BODY {
            return Err(HttpError::BodyTooLarge);
        }
        let data_end = data_start + size;
        let rest = &input[data_end.min(input.len())..];
        let crlf = if rest.starts_with(b"\r\n") {
            2
        } else if rest.starts_with(b"\n") {
            1
        } else if rest.is_empty() || rest == b"\r" {
            return Ok(None);
        } else {
            return Err(HttpError::Chunk(
                "chunk data not followed by CRLF (is the size right?)".into(),
            ));
        };
        self.body.extend_from_slice(&input[data_start..data_end]);
        Ok(Some(data_end + crlf))
    }

    /// The trailer section after the last chunk, up to its empty line: its length, `None` if
    /// it has not all arrived. Trailer fields are checked like header fields, and ignored.
    fn trailers(&self, input: &[u8]) -> Result<Option<usize>, HttpError> {
        let mut at = 0;
        loop {
            let Some(lf) = input[at..].iter().position(|&b| b == b'\n') else {
                return if input.len() > MAX_HEAD {
                    Err(HttpError::HeadTooLarge)
                } else {
                    Ok(None)
                };
            };
            let raw = &input[at..at + lf];
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            at += lf + 1;
            if line.is_empty() {
                return Ok(Some(at));
            }
            if line.contains(&b'\r') {
                return Err(HttpError::Chunk("a bare CR in the trailer section".into()));
            }
            field(line)?;
        }
    }
}

/// A chunk size line: hex digits, then optional chunk extensions (`;name=value`), which are
/// ignored.
fn chunk_size(line: &[u8]) -> Result<usize, HttpError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let bad = |why: &str| HttpError::Chunk(format!("{why}: '{}'", printable(line)));
    if line.contains(&b'\r') {
        return Err(bad("a bare CR"));
    }
    let digits = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(bad("no chunk size"));
    }
    let ext = line[digits..].trim_ascii_start();
    if !ext.is_empty() && ext[0] != b';' {
        return Err(bad("junk after the chunk size"));
    }
    if ext.iter().any(|&c| c != b'\t' && (c < 0x20 || c == 0x7f)) {
        return Err(bad("a control character in a chunk extension"));
    }
    let hex = std::str::from_utf8(&line[..digits]).expect("hex digits");
    let hex = hex.trim_start_matches('0');
    if hex.len() > 8 {
        return Err(HttpError::BodyTooLarge);
    }
    Ok(usize::from_str_radix(if hex.is_empty() { "0" } else { hex }, 16).expect("hex digits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, HttpError> {
        parse_request(s.as_bytes()).map(|(r, _)| r)
    }

    fn status(s: &str) -> u16 {
        parse(s).map(|_| 200).unwrap_or_else(|e| e.status())
    }

    #[test]
    fn plain_requests_parse() {
        let r = parse("GET /v1/status HTTP/1.1\r\nHost: kvmnet\r\n\r\n").unwrap();
        assert_eq!(r.head.method, "GET");
        assert_eq!(r.head.path(), "/v1/status");
        assert_eq!(r.head.framing, Framing::None);
        assert!(r.body.is_empty());
        let r = parse(
            "POST /v1/apply?source=a HTTP/1.1\r\nHost: x\r\nContent-Type: application/yaml\r\nContent-Length: 5\r\n\r\nhello",
        )
        .unwrap();
        assert_eq!(r.body, b"hello");
        assert_eq!(r.head.field("content-type"), Some("application/yaml"));
        assert_eq!(r.head.path(), "/v1/apply");
        // Bare LF line ends, leading empty lines, HTTP/1.0 without Host.
        let r = parse("\r\nPOST / HTTP/1.0\nContent-Length: 2\n\nab").unwrap();
        assert_eq!((r.head.minor, r.body.as_slice()), (0, &b"ab"[..]));
        // Identical repeated lengths are one length.
        let r = parse("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\nab").unwrap();
        assert_eq!(r.body, b"ab");
    }

    #[test]
    fn chunked_bodies_parse_however_they_arrive() {
        let whole = "POST /v1/apply HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: y\r\n\r\n";
        let (r, n) = parse_request(whole.as_bytes()).unwrap();
        assert_eq!(n, whole.len());
        assert_eq!(r.body, b"hello, world");
        assert!(r.head.expect_continue);
        // Byte by byte: incomplete until the last byte, then the same body.
        let (head, hn) = parse_head(whole.as_bytes()).unwrap();
        let mut reader = BodyReader::new(head.framing);
        let body = &whole.as_bytes()[hn..];
        for i in 0..=body.len() {
            reader.advance(&body[..i]).unwrap();
            assert_eq!(reader.done(), i == body.len(), "at {i}");
        }
        assert_eq!(reader.into_body(), b"hello, world");
        for cut in 0..whole.len() {
            assert_eq!(
                parse_request(&whole.as_bytes()[..cut]),
                Err(HttpError::Incomplete),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn malformed_requests_get_the_right_status() {
        let h = "Host: x\r\n";
        for (req, want) in [
            ("GET /v1/status\r\n\r\n".to_string(), 400),
            ("GET  /v1/status HTTP/1.1\r\n\r\n".into(), 400),
            ("GET v1/status HTTP/1.1\r\nHost: x\r\n\r\n".into(), 400),
            ("G(T / HTTP/1.1\r\nHost: x\r\n\r\n".into(), 400),
            ("GET / HTTP/2.0\r\nHost: x\r\n\r\n".into(), 505),
            ("GET / HTTP/1.1\r\n\r\n".into(), 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(), 400),
            (format!("GET / HTTP/1.1\r\n{h}Bad Name: v\r\n\r\n"), 400),
            (format!("GET / HTTP/1.1\r\n{h}Name : v\r\n\r\n"), 400),
            (format!("GET / HTTP/1.1\r\n{h}NoColon\r\n\r\n"), 400),
            (format!("GET / HTTP/1.1\r\n{h}A: b\r\n folded\r\n\r\n"), 400),
            (format!("GET / HTTP/1.1\r\n{h}A: b\rc\r\n\r\n"), 400),
            (format!("GET / HTTP/1.1\r\n{h}A: b\x01\r\n\r\n"), 400),
            (
                format!(
                    "POST / HTTP/1.1\r\n{h}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                ),
                400,
            ),
            (
                format!("POST / HTTP/1.1\r\n{h}Content-Length: 3, 4\r\n\r\nabcd"),
                400,
            ),
            (
                format!("POST / HTTP/1.1\r\n{h}Content-Length: -1\r\n\r\n"),
                400,
            ),
            (
                format!("POST / HTTP/1.1\r\n{h}Content-Length: +1\r\n\r\na"),
                400,
            ),
            (
                format!("POST / HTTP/1.1\r\n{h}Content-Length: 99999999999\r\n\r\n"),
                413,
            ),
            (
                format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: gzip\r\n\r\n"),
                501,
            ),
            (
                format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
                501,
            ),
            (
                format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked, gzip\r\n\r\n"),
                400,
            ),
            (
                format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked, chunked\r\n\r\n"),
                400,
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
                400,
            ),
            (
                format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\nzz\r\n"),
                400,
            ),
            (
                format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n"),
                400,
            ),
            (
                format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n1ffffffff\r\n"),
                413,
            ),
            (
                format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n1 x\r\n"),
                400,
            ),
            (
                format!("GET / HTTP/1.1\r\n{h}Expect: something\r\n\r\n"),
                417,
            ),
        ] {
            assert_eq!(status(&req), want, "{req:?}");
        }
        let big = format!("GET / HTTP/1.1\r\n{h}A: {}\r\n\r\n", "x".repeat(MAX_HEAD));
        assert_eq!(status(&big), 431);
        let endless = format!("GET / HTTP/1.1\r\n{h}A: {}", "x".repeat(MAX_HEAD));
        assert_eq!(status(&endless), 431);
        let many: String = (0..=MAX_FIELDS).map(|i| format!("F{i}: v\r\n")).collect();
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{h}{many}\r\n")), 431);
    }

    #[test]
    fn the_end_of_a_head_is_found_from_where_the_last_look_stopped() {
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest";
        for split in 0..req.len() {
            let found = head_end(&req[..split], 0).or_else(|| head_end(req, split));
            assert_eq!(found, Some(req.len() - 4), "split at {split}");
        }
        assert_eq!(head_end(b"\r\n\r\n", 0), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n", 0), Some(16));
    }

    /// Arbitrary bytes never panic (a small, deterministic stand-in for the fuzzer).
    #[test]
    fn arbitrary_bytes_never_panic() {
        let seeds: [&[u8]; 3] = [
            b"POST /v1/apply HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            b"\r\n\n\r\r\n:",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for seed in seeds {
            for _ in 0..2000 {
                let mut b = seed.to_vec();
                for _ in 0..4 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let i = (x % b.len() as u64) as usize;
                    match x >> 60 {
                        0..=7 => b[i] = (x >> 32) as u8,
                        8..=11 => b.truncate(i),
                        _ => b.insert(i, b"\r\n:; 0"[(x >> 40) as usize % 6]),
                    }
                    if b.is_empty() {
                        b.push(b'G');
                    }
                }
                let _ = parse_request(&b);
            }
        }
    }
}
