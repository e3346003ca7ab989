//! tandem's own Range-capable HTTP/1.1 origin server, for `tandem lab` and
//! the integration tests.
//!
//! Serves `GET` and `HEAD` of files from a directory or from memory with
//! keep-alive, `Accept-Ranges: bytes`, a strong `ETag`, `Last-Modified`,
//! single byte ranges (`a-b`, `a-`, `-n`) answered with 206, 416 for
//! unsatisfiable ranges, and `If-Range`. Bodies are streamed from the file
//! in 64 KiB chunks. Knobs: range support off (an origin without Range),
//! and a per-connection rate limit.

use std::collections::HashMap;
use std::io::{self, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use tandem_http::{HeadError, MAX_HEAD_LEN, Parse, RangeHeader, RequestHead};

const CHUNK: usize = 64 * 1024;
/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct MemFile {
    data: Arc<[u8]>,
    etag: String,
    last_modified: String,
}

#[derive(Debug, Clone)]
enum Store {
    Dir(Arc<PathBuf>),
    Memory(Arc<Mutex<HashMap<String, MemFile>>>),
}

/// What [`serve_origin`] serves, and how.
///
/// Cloning shares the store: a test keeps a clone to replace a file while
/// the server runs.
#[derive(Debug, Clone)]
pub struct OriginFiles {
    store: Store,
    ranges: bool,
    rate_limit: Option<u64>,
}

impl OriginFiles {
    /// Serve the files under `dir` (URL path `/a/b.mp4` is `dir/a/b.mp4`;
    /// `..` and other escapes are refused with 404). The ETag is made of
    /// inode, size and modification time in nanoseconds, so it changes
    /// when the file is replaced or rewritten.
    pub fn dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            store: Store::Dir(Arc::new(dir.into())),
            ranges: true,
            rate_limit: None,
        }
    }

    /// Serve files held in memory, added with [`OriginFiles::insert`].
    pub fn memory() -> Self {
        Self {
            store: Store::Memory(Arc::default()),
            ranges: true,
            rate_limit: None,
        }
    }

    /// Add or replace the in-memory file at URL path `path` (e.g.
    /// `/movie.mp4`). The ETag is a hash of the content. Does nothing for a
    /// directory store.
    pub fn insert(&self, path: &str, data: impl Into<Arc<[u8]>>) {
        let Store::Memory(map) = &self.store else {
            return;
        };
        let data: Arc<[u8]> = data.into();
        let etag = format!("\"{:016x}-{:x}\"", fnv1a(&data), data.len());
        let file = MemFile {
            data,
            etag,
            last_modified: http_date(SystemTime::now()),
        };
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(path.to_owned(), file);
    }

    /// Whether to honour `Range` and advertise `Accept-Ranges: bytes`
    /// (default true). With false the server always answers 200 with the
    /// whole body and sends no `Accept-Ranges`.
    pub fn with_ranges(mut self, ranges: bool) -> Self {
        self.ranges = ranges;
        self
    }

    /// Limit each connection's body sending rate to `bytes_per_sec`
    /// (`None`: unlimited, the default).
    pub fn with_rate_limit(mut self, bytes_per_sec: Option<u64>) -> Self {
        self.rate_limit = bytes_per_sec.filter(|&r| r > 0);
        self
    }
}

/// Serve HTTP/1.1 on `listener` until an accept error that is not
/// transient. Each connection runs in its own task.
pub async fn serve_origin(listener: TcpListener, files: OriginFiles) -> io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        let files = files.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, &files).await {
                tracing::debug!(%peer, error = %e, "origin connection ended");
            }
        });
    }
}

async fn serve_connection(mut stream: TcpStream, files: &OriginFiles) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; MAX_HEAD_LEN];
    let mut filled = 0;
    loop {
        let (req, head_len) = loop {
            match RequestHead::parse(&buf[..filled]) {
                Ok(Parse::Complete { head, head_len }) => break (head, head_len),
                Ok(Parse::Partial) => {}
                Err(HeadError::TooLarge) => {
                    return simple(&mut stream, 431, "Request Header Fields Too Large").await;
                }
                Err(_) => return simple(&mut stream, 400, "Bad Request").await,
            }
            let n = match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buf[filled..])).await
            {
                Err(_) => return Ok(()),
                Ok(r) => r?,
            };
            if n == 0 {
                return Ok(());
            }
            filled += n;
        };
        buf.copy_within(head_len..filled, 0);
        filled -= head_len;
        if !respond(&mut stream, &req, files).await? {
            stream.shutdown().await.ok();
            return Ok(());
        }
    }
}

/// Answer a small error and close.
async fn simple(stream: &mut TcpStream, status: u16, reason: &str) -> io::Result<()> {
    let head =
        format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.shutdown().await.ok();
    Ok(())
}

/// A file opened for one response.
enum Body {
    File(tokio::fs::File),
    Memory(Arc<[u8]>),
}

struct Entity {
    body: Body,
    len: u64,
    etag: String,
    last_modified: String,
}

/// Answer one request. Returns whether the connection stays open.
async fn respond(
    stream: &mut TcpStream,
    req: &RequestHead,
    files: &OriginFiles,
) -> io::Result<bool> {
    let mut keep = req.version == 1 && !req.headers.has_token("connection", "close")
        || req.version == 0 && req.headers.has_token("connection", "keep-alive");
    // Requests with a body are not expected; refuse rather than parse it.
    let has_body = req.headers.contains("transfer-encoding")
        || req
            .headers
            .get_str("content-length")
            .is_some_and(|v| v != "0");
    if has_body {
        simple(stream, 400, "Bad Request").await?;
        return Ok(false);
    }
    let head_only = match req.method.as_str() {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let h = format!(
                "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Length: 0\r\n{}\r\n",
                conn_field(keep)
            );
            stream.write_all(h.as_bytes()).await?;
            return Ok(keep);
        }
    };
    let path = url_path(&req.target);
    let entity = match &path {
        Some(p) => open(files, p).await,
        None => None,
    };
    let Some(entity) = entity else {
        let h = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n{}\r\n",
            conn_field(keep)
        );
        stream.write_all(h.as_bytes()).await?;
        return Ok(keep);
    };
    let content_type = path
        .as_deref()
        .map_or("application/octet-stream", content_type);

    let mut status = "200 OK";
    let mut range = 0..entity.len;
    let mut content_range = None;
    if files.ranges {
        if let Some(value) = req.headers.get("range") {
            let if_range_ok = req
                .headers
                .get_str("if-range")
                .is_none_or(|v| if_range_matches(v, &entity));
            if if_range_ok {
                if let RangeHeader::Single(spec) = RangeHeader::parse(value) {
                    match spec.resolve(entity.len) {
                        Some(r) => {
                            status = "206 Partial Content";
                            content_range = Some(format!(
                                "Content-Range: bytes {}-{}/{}\r\n",
                                r.start,
                                r.end - 1,
                                entity.len
                            ));
                            range = r;
                        }
                        None => {
                            let h = format!(
                                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\n{}\r\n",
                                entity.len,
                                conn_field(keep)
                            );
                            stream.write_all(h.as_bytes()).await?;
                            return Ok(keep);
                        }
                    }
                }
            }
        }
    }
    let head = format!(
        "HTTP/1.1 {status}\r\nServer: tandem-origin\r\nDate: {date}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n{cr}Last-Modified: {lm}\r\nETag: {etag}\r\n{ar}{conn}\r\n",
        date = http_date(SystemTime::now()),
        len = range.end - range.start,
        cr = content_range.as_deref().unwrap_or(""),
        lm = entity.last_modified,
        etag = entity.etag,
        ar = if files.ranges {
            "Accept-Ranges: bytes\r\n"
        } else {
            ""
        },
        conn = conn_field(keep),
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        if let Err(e) = send_body(stream, entity.body, range, files.rate_limit).await {
            // The file shrank or the client left: the framing is broken.
            keep = false;
            tracing::debug!(error = %e, "origin body not sent in full");
        }
    }
    Ok(keep)
}

fn conn_field(keep: bool) -> &'static str {
    if keep { "" } else { "Connection: close\r\n" }
}

fn if_range_matches(v: &str, e: &Entity) -> bool {
    if v.starts_with('"') {
        v == e.etag
    } else if v.starts_with("W/") {
        false
    } else {
        v == e.last_modified
    }
}

async fn send_body(
    stream: &mut TcpStream,
    body: Body,
    range: Range<u64>,
    rate: Option<u64>,
) -> io::Result<()> {
    let chunk = match rate {
        Some(r) => usize::try_from(r / 20).unwrap_or(CHUNK).clamp(1024, CHUNK),
        None => CHUNK,
    };
    let mut pacer = rate.map(|r| Pacer {
        rate: r,
        start: Instant::now(),
        sent: 0,
    });
    let mut left = range.end - range.start;
    match body {
        Body::File(mut file) => {
            file.seek(SeekFrom::Start(range.start)).await?;
            let mut buf = vec![0u8; chunk];
            while left > 0 {
                let want = usize::try_from(left).unwrap_or(usize::MAX).min(chunk);
                let n = file.read(&mut buf[..want]).await?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank"));
                }
                stream.write_all(&buf[..n]).await?;
                left -= n as u64;
                if let Some(p) = pacer.as_mut() {
                    p.pace(n).await;
                }
            }
        }
        Body::Memory(data) => {
            let (Ok(start), Ok(end)) = (usize::try_from(range.start), usize::try_from(range.end))
            else {
                return Err(io::Error::other("range beyond memory"));
            };
            let slice = data
                .get(start..end)
                .ok_or_else(|| io::Error::other("range beyond memory"))?;
            for part in slice.chunks(chunk) {
                stream.write_all(part).await?;
                if let Some(p) = pacer.as_mut() {
                    p.pace(part.len()).await;
                }
            }
        }
    }
    stream.flush().await
}

/// Sleeps so that `sent` bytes take at least `sent / rate` seconds.
struct Pacer {
    rate: u64,
    start: Instant,
    sent: u64,
}

impl Pacer {
    async fn pace(&mut self, n: usize) {
        self.sent += n as u64;
        let due = Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// Open the entity at URL path `path` (already decoded and checked).
async fn open(files: &OriginFiles, path: &str) -> Option<Entity> {
    match &files.store {
        Store::Memory(map) => {
            let file = {
                let map = map.lock().unwrap_or_else(|p| p.into_inner());
                map.get(path).cloned()
            }?;
            Some(Entity {
                len: file.data.len() as u64,
                body: Body::Memory(file.data),
                etag: file.etag,
                last_modified: file.last_modified,
            })
        }
        Store::Dir(dir) => {
            let full = safe_join(dir, path)?;
            let file = tokio::fs::File::open(&full).await.ok()?;
            // Metadata of the opened file: consistent with what we send
            // even if the path is replaced meanwhile.
            let meta = file.metadata().await.ok()?;
            if !meta.is_file() {
                return None;
            }
            let mtime_ns = (meta.mtime() as i128) * 1_000_000_000 + meta.mtime_nsec() as i128;
            let modified = meta.modified().unwrap_or(UNIX_EPOCH);
            Some(Entity {
                len: meta.len(),
                body: Body::File(file),
                etag: format!("\"{:x}-{:x}-{:x}\"", meta.ino(), meta.len(), mtime_ns),
                last_modified: http_date(modified),
            })
        }
    }
}

/// `dir` joined with the URL path, refusing anything but plain names.
fn safe_join(dir: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path.trim_start_matches('/'));
    let mut out = dir.to_path_buf();
    for c in rel.components() {
        match c {
            Component::Normal(name) => out.push(name),
            _ => return None,
        }
    }
    (out != dir).then_some(out)
}

/// The decoded path of a request target (origin-form or absolute-form),
/// without query; `None` if it cannot be decoded or contains NUL, a
/// backslash, or `.`/`..` segments.
fn url_path(target: &str) -> Option<String> {
    let path = if let Some(rest) = target
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("http://"))
        .and_then(|_| target.get(7..))
    {
        rest.find('/').map_or("/", |i| &rest[i..])
    } else {
        target
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return None;
    }
    let mut bytes = Vec::with_capacity(path.len());
    let mut it = path.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hi = it.next().and_then(|c| (c as char).to_digit(16))?;
            let lo = it.next().and_then(|c| (c as char).to_digit(16))?;
            bytes.push((hi * 16 + lo) as u8);
        } else {
            bytes.push(b);
        }
    }
    let decoded = String::from_utf8(bytes).ok()?;
    let bad = decoded.contains('\0')
        || decoded.contains('\\')
        || decoded.split('/').any(|seg| seg == "." || seg == "..");
    (!bad).then_some(decoded)
}

/// Content-Type by file extension.
fn content_type(path: &str) -> &'static str {
    let ext = path
        .rsplit('/')
        .next()
        .and_then(|name| name.rsplit_once('.'))
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "ts" => "video/mp2t",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "ogg" | "oga" => "audio/ogg",
        "flac" => "audio/flac",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "xz" => "application/x-xz",
        "iso" => "application/x-iso9660-image",
        "deb" => "application/vnd.debian.binary-package",
        "pdf" => "application/pdf",
        "json" => "application/json",
        "txt" => "text/plain",
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "js" => "text/javascript",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        _ => "application/octet-stream",
    }
}

/// 64-bit FNV-1a: a content hash for in-memory ETags (not cryptographic;
/// only needs to change when the test replaces the content).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// IMF-fixdate (RFC 9110 5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        WD[(days % 7) as usize],
        d,
        MO[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), proleptic
/// Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // leap day
        assert_eq!(http_date(t), "Tue, 29 Feb 2000 00:00:00 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_219_200);
        assert_eq!(http_date(t), "Sat, 21 Nov 2026 00:00:00 GMT");
    }

    #[test]
    fn dates_parse_back() {
        let mut t = 0u64;
        while t < 5_000_000_000 {
            let d = http_date(UNIX_EPOCH + Duration::from_secs(t));
            assert_eq!(tandem_http::parse_http_date(&d), Some(t), "{d}");
            t = t * 3 + 12_345;
        }
    }

    #[test]
    fn paths() {
        assert_eq!(url_path("/a/b.mp4?x=1").as_deref(), Some("/a/b.mp4"));
        assert_eq!(url_path("/a%20b").as_deref(), Some("/a b"));
        assert_eq!(url_path("http://h:80/x.bin").as_deref(), Some("/x.bin"));
        assert_eq!(url_path("http://h").as_deref(), Some("/"));
        assert_eq!(url_path("/../etc/passwd"), None);
        assert_eq!(url_path("/a/%2e%2e/b"), None);
        assert_eq!(url_path("/a%00"), None);
        assert_eq!(url_path("/a%zz"), None);
        assert_eq!(url_path("/a%5c..%5cb"), None);
        assert_eq!(url_path("*"), None);
        let d = Path::new("/srv");
        assert_eq!(safe_join(d, "/a/b"), Some(PathBuf::from("/srv/a/b")));
        assert_eq!(safe_join(d, "/"), None);
        assert_eq!(safe_join(d, "/a/../b"), None);
    }

    #[test]
    fn types() {
        assert_eq!(content_type("/x/movie.MP4"), "video/mp4");
        assert_eq!(content_type("/blob.bin"), "application/octet-stream");
        assert_eq!(content_type("/notes.txt"), "text/plain");
        assert_eq!(content_type("/noext"), "application/octet-stream");
        assert_eq!(content_type("/dir.mp4/noext"), "application/octet-stream");
    }

    #[test]
    fn if_range_rules() {
        let e = Entity {
            body: Body::Memory(Arc::from(&b""[..])),
            len: 0,
            etag: "\"e1\"".into(),
            last_modified: "Sun, 06 Nov 1994 08:49:37 GMT".into(),
        };
        assert!(if_range_matches("\"e1\"", &e));
        assert!(!if_range_matches("\"e2\"", &e));
        assert!(!if_range_matches("W/\"e1\"", &e));
        assert!(if_range_matches("Sun, 06 Nov 1994 08:49:37 GMT", &e));
        assert!(!if_range_matches("Sun, 06 Nov 1994 08:49:38 GMT", &e));
    }
}
