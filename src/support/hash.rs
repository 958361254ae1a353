//! # Hashes and digests
//!
//! SHA-256 names blobs and cache keys; SHA-512 checks downloads. Digests are `oci_spec` types,
//! never strings built by hand. Hashing writers are `sha2`'s own `io::Write` implementation.

use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use oci_spec::image::{Digest, Sha256Digest};
use serde::Serialize;
use sha2::{Digest as _, Sha256, Sha512};

/// Makes a digest from a SHA-256 output.
pub fn sha256_digest(bytes: &[u8; 32]) -> Digest {
    let s: Sha256Digest = hex::encode(bytes).parse().expect("64 lowercase hex digits");
    s.into()
}

/// The SHA-256 digest of bytes.
pub fn sha256_of(data: &[u8]) -> Digest {
    sha256_digest(&Sha256::digest(data).into())
}

/// Serializes with object keys sorted, so JSON blobs (whose digests are image identities) do not
/// depend on hash-map order.
pub fn canonical_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    let value = serde_json::to_value(v)?;
    Ok(serde_json::to_vec(&value)?)
}

/// A stable key from parts: SHA-256 over their canonical JSON, hex.
pub fn key_of<T: Serialize>(parts: &T) -> String {
    let data = canonical_json(parts).expect("keys are plain data");
    hex::encode(Sha256::digest(&data))
}

/// Hashes what a reader yields (SHA-256); returns the digest and the byte count.
pub fn hash_reader(mut r: impl Read) -> io::Result<(Digest, u64)> {
    let mut h = Sha256::new();
    let n = io::copy(&mut r, &mut h)?;
    Ok((sha256_digest(&h.finalize().into()), n))
}

/// SHA-256 (a digest) and SHA-512 (hex) of a stream in one pass, and its length: what a disk
/// record keeps (Glance's usual `os_hash_algo` is sha512).
pub fn sha256_and_sha512(mut r: impl Read) -> io::Result<(Digest, String, u64)> {
    let (mut a, mut b) = (Sha256::new(), sha2::Sha512::new());
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sha2::Digest::update(&mut a, &buf[..got]);
        sha2::Digest::update(&mut b, &buf[..got]);
        n += got as u64;
    }
    Ok((
        sha256_digest(&sha2::Digest::finalize(a).into()),
        hex::encode(sha2::Digest::finalize(b)),
        n,
    ))
}

/// SHA-512 of a file, hex; the error names the file.
pub fn sha512_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {path:?}"))?;
    let mut h = Sha512::new();
    io::copy(&mut f, &mut h).with_context(|| format!("reading {path:?}"))?;
    Ok(hex::encode(h.finalize()))
}

/// A writer that hashes (SHA-256) and counts what passes through it to `inner`.
pub struct Tee<W: Write> {
    pub inner: W,
    hasher: Sha256,
    pub size: u64,
}

impl<W: Write> Tee<W> {
    pub fn new(inner: W) -> Self {
        Tee {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// The digest of what has passed so far.
    pub fn digest(&self) -> Digest {
        sha256_digest(&self.hasher.clone().finalize().into())
    }
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that counts what passes through it.
pub struct CountingReader<R> {
    pub inner: R,
    pub n: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

/// A writer that counts what passes through it.
pub struct CountingWriter<W> {
    pub inner: W,
    pub n: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(b)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys() {
        let mut m = std::collections::HashMap::new();
        for k in ["b", "a", "c"] {
            m.insert(k.to_string(), 1);
        }
        assert_eq!(canonical_json(&m).unwrap(), br#"{"a":1,"b":1,"c":1}"#);
    }

    #[test]
    fn tee_hashes_what_passes() {
        let mut t = Tee::new(Vec::new());
        t.write_all(b"hello").unwrap();
        assert_eq!(t.digest(), sha256_of(b"hello"));
        assert_eq!(t.size, 5);
        assert_eq!(hash_reader(&b"hello"[..]).unwrap().0, sha256_of(b"hello"));
    }
}
