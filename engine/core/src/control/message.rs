//! The body of a config message on the ring: the config's TOML text, plus the address every
//! endpoint name resolved to on the ctl side (so a shard never resolves a name) and the files
//! the config names (certificates, keys, CA files), as ctl read them (so a shard never reads a
//! file).
//!
//! ```text
//! "SGC2"
//! u32 LE   resolved endpoints, then for each:
//!          u16 LE length, `host:port` as written   u16 LE length, the socket address
//! u32 LE   TOML length, then the TOML text (UTF-8)
//! u32 LE   files, then for each:
//!          u16 LE length, the path as written   u32 LE length, the contents
//! optional "SGOP", u32 LE length, a change to the tenant store (`store_op::OpMessage`, JSON)
//! ```
//! Nothing else may follow. A message with a change carries the running config's text with
//! it, so the newest message always says what runs. [`decode`] never panics and refuses
//! anything else; it has a fuzz target.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::config::Config;
use crate::limits::{
    CONFIG_BYTES_MAX, ENDPOINTS_MAX, TLS_CERTS_MAX, TLS_FILE_BYTES_MAX, UPSTREAMS_MAX,
};

const MAGIC: &[u8; 4] = b"SGC2";
const OP_MAGIC: &[u8; 4] = b"SGOP";
/// Most files a message may carry (two per certificate, one CA file per upstream).
const FILES_MAX: usize = 2 * TLS_CERTS_MAX + UPSTREAMS_MAX;
/// Most resolved entries a message may carry.
const RESOLVED_MAX: usize = ENDPOINTS_MAX * UPSTREAMS_MAX;

/// A decoded config message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMessage {
    pub toml: String,
    /// `host:port` (as written in the endpoint, port added) → address.
    pub resolved: HashMap<String, SocketAddr>,
    /// A file's path as written in the config → its contents.
    pub files: HashMap<String, Vec<u8>>,
    /// A change to the tenant store (`store_op::OpMessage` as JSON) made with this version.
    pub op: Option<Vec<u8>>,
}

/// [`encode`] with a change to the tenant store (`op`, JSON) made with the version.
pub fn encode_with_op(toml: &str, config: &Config, op: &[u8]) -> Result<Vec<u8>, String> {
    if op.len() > crate::store_op::STORE_OP_BYTES_MAX {
        return Err(format!(
            "a store operation of {} bytes; at most {}",
            op.len(),
            crate::store_op::STORE_OP_BYTES_MAX
        ));
    }
    let mut out = encode(toml, config)?;
    out.extend_from_slice(OP_MAGIC);
    out.extend_from_slice(&u32::try_from(op.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(op);
    Ok(out)
}

/// Encode `toml` and the addresses `config` (validated from that text) resolved its endpoints to.
/// Refuses text over `CONFIG_BYTES_MAX`.
pub fn encode(toml: &str, config: &Config) -> Result<Vec<u8>, String> {
    if toml.len() > CONFIG_BYTES_MAX {
        return Err(format!(
            "config is {} bytes; at most {CONFIG_BYTES_MAX} bytes can be applied",
            toml.len()
        ));
    }
    let mut resolved: Vec<(String, SocketAddr)> = config
        .upstreams
        .iter()
        .flat_map(|u| u.endpoints.iter())
        .map(|e| (e.resolve_key(), e.addr))
        .collect();
    resolved.sort();
    resolved.dedup();
    let mut out = Vec::with_capacity(toml.len() + 64 + resolved.len() * 48);
    out.extend_from_slice(MAGIC);
    let count = u32::try_from(resolved.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_le_bytes());
    for (key, addr) in &resolved {
        put_short(&mut out, key.as_bytes());
        put_short(&mut out, addr.to_string().as_bytes());
    }
    // Checked above: at most CONFIG_BYTES_MAX.
    let len = u32::try_from(toml.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(toml.as_bytes());
    let files = config.files();
    if files.len() > FILES_MAX {
        return Err(format!(
            "the config names {} files; at most {FILES_MAX}",
            files.len()
        ));
    }
    out.extend_from_slice(&u32::try_from(files.len()).unwrap_or(u32::MAX).to_le_bytes());
    for (path, bytes) in files {
        if bytes.len() > TLS_FILE_BYTES_MAX || path.len() > usize::from(u16::MAX) {
            return Err(format!("{path}: too large to carry"));
        }
        put_short(&mut out, path.as_bytes());
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

fn put_short(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&bytes[..usize::from(len)]);
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.rest.len() < n {
            return Err("config message truncated");
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }

    fn u16(&mut self) -> Result<usize, &'static str> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_le_bytes([b[0], b[1]])))
    }

    fn u32(&mut self) -> Result<usize, &'static str> {
        let b = self.take(4)?;
        usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .map_err(|_| "length does not fit")
    }

    fn text(&mut self, n: usize) -> Result<&'a str, &'static str> {
        std::str::from_utf8(self.take(n)?).map_err(|_| "config message text is not UTF-8")
    }
}

/// Decode a message body. Errors say what is wrong, for the shard's status block.
pub fn decode(body: &[u8]) -> Result<ConfigMessage, &'static str> {
    let mut r = Reader { rest: body };
    if r.take(4)? != MAGIC {
        return Err("not a config message");
    }
    let count = r.u32()?;
    if count > RESOLVED_MAX {
        return Err("too many resolved endpoints");
    }
    let mut resolved = HashMap::with_capacity(count.min(1024));
    for _ in 0..count {
        let n = r.u16()?;
        let key = r.text(n)?.to_owned();
        let n = r.u16()?;
        let addr: SocketAddr = r
            .text(n)?
            .parse()
            .map_err(|_| "bad socket address in config message")?;
        resolved.insert(key, addr);
    }
    let n = r.u32()?;
    if n > CONFIG_BYTES_MAX {
        return Err("config text larger than config_bytes_max");
    }
    let toml = r.text(n)?.to_owned();
    let count = r.u32()?;
    if count > FILES_MAX {
        return Err("too many files in config message");
    }
    let mut files = HashMap::with_capacity(count);
    for _ in 0..count {
        let n = r.u16()?;
        let path = r.text(n)?.to_owned();
        let n = r.u32()?;
        if n > TLS_FILE_BYTES_MAX {
            return Err("file larger than tls_file_bytes_max in config message");
        }
        files.insert(path, r.take(n)?.to_vec());
    }
    let op = if r.rest.is_empty() {
        None
    } else {
        if r.take(4)? != OP_MAGIC {
            return Err("trailing bytes after the config message");
        }
        let n = r.u32()?;
        if n > crate::store_op::STORE_OP_BYTES_MAX {
            return Err("store operation larger than store_op_bytes_max");
        }
        Some(r.take(n)?.to_vec())
    };
    if !r.rest.is_empty() {
        return Err("trailing bytes after the config message");
    }
    Ok(ConfigMessage {
        toml,
        resolved,
        files,
        op,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOML: &str = r#"
[server]
auth = "none"
[[upstreams]]
name = "a"
endpoints = ["http://localhost:9", "http://127.0.0.1:10"]
[[routes]]
path_prefix = "/"
upstream = "a"
"#;

    #[test]
    fn round_trip_and_resolves_from_the_table() {
        let c = Config::from_toml(TOML).expect("valid");
        let body = encode(TOML, &c).expect("small");
        let m = decode(&body).expect("decodes");
        assert_eq!(m.toml, TOML);
        assert_eq!(m.resolved.len(), 2);
        let again = Config::from_message(&m).expect("valid from the table");
        assert_eq!(again.upstreams[0].endpoints, c.upstreams[0].endpoints);
    }

    #[test]
    fn every_prefix_and_bad_magic_are_refused() {
        let c = Config::from_toml(TOML).expect("valid");
        let body = encode(TOML, &c).expect("small");
        for n in 0..body.len() {
            assert!(decode(&body[..n]).is_err(), "prefix {n} accepted");
        }
        let mut extra = body.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
        let mut bad = body;
        bad[0] = b'X';
        assert_eq!(decode(&bad), Err("not a config message"));
    }

    #[test]
    fn a_change_to_the_store_rides_with_the_config_and_every_prefix_is_refused() {
        let c = Config::from_toml(TOML).expect("valid");
        let plain = encode(TOML, &c).expect("small");
        let body = encode_with_op(TOML, &c, br#"{"op":"tenant_remove"}"#).expect("small");
        let m = decode(&body).expect("decodes");
        assert_eq!(m.toml, TOML);
        assert_eq!(m.op.as_deref(), Some(&br#"{"op":"tenant_remove"}"#[..]));
        assert_eq!(decode(&plain).expect("decodes").op, None);
        for n in plain.len() + 1..body.len() {
            assert!(decode(&body[..n]).is_err(), "prefix {n} accepted");
        }
        let mut extra = body;
        extra.push(b'}');
        assert!(decode(&extra).is_err());
        let big = vec![b' '; crate::store_op::STORE_OP_BYTES_MAX + 1];
        assert!(encode_with_op(TOML, &c, &big).is_err());
    }
}
