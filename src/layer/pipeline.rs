//! # Packing a layer: tar, diff_id, compression and blob write, all at once
//!
//! ```text
//!            chunks (Arc)            ┌─► hasher ─── SHA-256 (diff_id), CRC-32, length
//! caller ── tar writer ── chunker ───┤
//!            (producer)              └─► workers ×N ── pieces ─► writer ── out (blob: SHA-256, file)
//!                 ▲                                                 │
//!                 └───────────────── a token per piece written ─────┘
//! ```
//!
//! The caller writes the tar stream on its own thread; it is cut into fixed-size chunks
//! ([`Compression::chunk_size`]) that go, shared, to a hashing thread (the uncompressed SHA-256,
//! the layer's diff_id) and to a pool of compression workers; a writer thread puts the compressed
//! pieces back in input order into `out` (the blob writer, which hashes and writes the file).
//! Every stage runs at once. Memory is bounded by tokens: a chunk is cut only when fewer than
//! [`IN_FLIGHT_BYTES`] of input are between the tar writer and the file (each chunk's input and
//! its compressed piece), so a slow disk or a slow compressor stalls the tar writer instead of
//! filling memory. The bytes depend on the input only, never on the number of threads or on
//! timing: the chunking is fixed and the pieces are written in order.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use oci_spec::image::Digest;
use sha2::{Digest as _, Sha256};

use super::compress::Compression;
use crate::support::hash::sha256_digest;

/// At most this much input (uncompressed) is in the pipeline at once, per layer.
pub const IN_FLIGHT_BYTES: usize = 16 << 20;

/// What [`pack`] made: the producer's result and the uncompressed stream's digest and length.
#[derive(Debug)]
pub struct Packed<T> {
    pub made: T,
    pub diff_id: Digest,
    pub uncompressed: u64,
}

type Chunk = Arc<Vec<u8>>;

/// Runs `produce`, which writes the uncompressed stream into the writer it is given, and writes
/// that stream compressed into `out`, on `threads` compression workers (see the module docs).
/// `progress` is told each chunk's length as it enters the pipeline.
pub fn pack<T, W: Write + Send>(
    compression: Compression,
    threads: usize,
    out: &mut W,
    progress: &(dyn Fn(u64) + Sync),
    produce: impl FnOnce(&mut dyn Write) -> Result<T>,
) -> Result<Packed<T>> {
    let threads = threads.max(1);
    let chunk = compression.chunk_size();
    let tokens = (IN_FLIGHT_BYTES / chunk).max(threads + 2);
    out.write_all(compression.prologue())
        .context("writing the compressed stream")?;
    let (made, hashed) = std::thread::scope(|s| -> Result<_> {
        let out = &mut *out;
        let (hash_tx, hash_rx) = sync_channel::<Chunk>(tokens);
        let (job_tx, job_rx) = sync_channel::<(u64, Chunk)>(tokens);
        let (done_tx, done_rx) = sync_channel::<(u64, io::Result<Vec<u8>>)>(tokens);
        let (token_tx, token_rx) = sync_channel::<()>(tokens);
        for _ in 0..tokens {
            token_tx.send(()).expect("room for every token");
        }
        let hasher = s.spawn(move || hash_chunks(hash_rx, compression.needs_crc()));
        let job_rx = Arc::new(Mutex::new(job_rx));
        for _ in 0..threads {
            let (rx, tx) = (Arc::clone(&job_rx), done_tx.clone());
            s.spawn(move || compress_chunks(compression, &rx, &tx));
        }
        drop(done_tx);
        let writer = s.spawn(move || write_in_order(done_rx, out, &token_tx));
        let mut sink = Chunker {
            buf: Vec::with_capacity(chunk),
            chunk,
            next: 0,
            hash_tx,
            job_tx,
            token_rx,
            progress,
        };
        let made = produce(&mut sink).and_then(|m| {
            sink.submit()?;
            Ok(m)
        });
        // Closing the channels ends the hasher, then the workers, then the writer.
        drop(sink);
        let hashed = hasher.join().expect("the hashing thread panicked");
        let written = writer.join().expect("the writing thread panicked");
        // The writer's error (a full disk) explains a producer that found the pipe closed.
        let written = written.context("writing the compressed stream")?;
        let made = made?;
        anyhow::ensure!(
            written == hashed.chunks,
            "internal: {written} compressed pieces written for {} chunks",
            hashed.chunks
        );
        Ok((made, hashed))
    })?;
    out.write_all(&compression.epilogue(hashed.crc, hashed.len)?)
        .context("writing the compressed stream")?;
    Ok(Packed {
        made,
        diff_id: hashed.digest,
        uncompressed: hashed.len,
    })
}

/// Cuts the stream into chunks and hands each to the hasher and the workers.
struct Chunker<'a> {
    buf: Vec<u8>,
    chunk: usize,
    next: u64,
    hash_tx: SyncSender<Chunk>,
    job_tx: SyncSender<(u64, Chunk)>,
    token_rx: Receiver<()>,
    progress: &'a (dyn Fn(u64) + Sync),
}

impl Chunker<'_> {
    /// Sends the buffered bytes (if any) as the next chunk, once a token says there is room.
    fn submit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let closed = || io::Error::other("the compression pipeline stopped");
        self.token_rx.recv().map_err(|_| closed())?;
        let data = Arc::new(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(self.chunk),
        ));
        (self.progress)(data.len() as u64);
        self.hash_tx.send(Arc::clone(&data)).map_err(|_| closed())?;
        self.job_tx.send((self.next, data)).map_err(|_| closed())?;
        self.next += 1;
        Ok(())
    }
}

impl Write for Chunker<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let take = (self.chunk - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() == self.chunk {
            self.submit()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the hasher saw.
struct Hashed {
    digest: Digest,
    crc: u32,
    len: u64,
    chunks: u64,
}

fn hash_chunks(rx: Receiver<Chunk>, crc: bool) -> Hashed {
    let mut sha = Sha256::new();
    let mut crc32 = crc32fast::Hasher::new();
    let (mut len, mut chunks) = (0u64, 0u64);
    for data in rx {
        sha.update(&data[..]);
        if crc {
            crc32.update(&data);
        }
        len += data.len() as u64;
        chunks += 1;
    }
    Hashed {
        digest: sha256_digest(&sha.finalize().into()),
        crc: crc32.finalize(),
        len,
        chunks,
    }
}

fn compress_chunks(
    compression: Compression,
    jobs: &Mutex<Receiver<(u64, Chunk)>>,
    done: &SyncSender<(u64, io::Result<Vec<u8>>)>,
) {
    let mut c = compression.piece_compressor();
    loop {
        let job = jobs.lock().expect("the job queue is poisoned").recv();
        let Ok((idx, data)) = job else { return };
        let piece = match &mut c {
            Ok(c) => c.compress(&data),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        drop(data);
        if done.send((idx, piece)).is_err() {
            return;
        }
    }
}

/// Writes the pieces in input order, giving a token back for each; returns how many it wrote.
/// On an error it returns at once: the closed channels stop the workers and the producer.
fn write_in_order<W: Write>(
    done: Receiver<(u64, io::Result<Vec<u8>>)>,
    out: &mut W,
    tokens: &SyncSender<()>,
) -> io::Result<u64> {
    let mut pending = BTreeMap::new();
    let mut next = 0u64;
    for (idx, piece) in done {
        pending.insert(idx, piece?);
        while let Some(piece) = pending.remove(&next) {
            out.write_all(&piece)?;
            next += 1;
            // The producer may be gone (it failed): nobody needs the token then.
            let _ = tokens.send(());
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_id_is_the_sha256_of_the_input() {
        let data = b"strata ".repeat(400_000);
        for c in [Compression::Gzip, Compression::Zstd] {
            let mut out = Vec::new();
            let p = pack(c, 2, &mut out, &|_| {}, |w| Ok(w.write_all(&data)?)).unwrap();
            assert_eq!(p.diff_id, crate::support::hash::sha256_of(&data));
            assert_eq!(p.uncompressed, data.len() as u64);
        }
    }

    #[test]
    fn a_producer_error_is_reported_and_nothing_hangs() {
        let mut out = Vec::new();
        let r = pack(Compression::Zstd, 2, &mut out, &|_| {}, |w| {
            w.write_all(&vec![7u8; 9 << 20])?;
            Err::<(), _>(anyhow::anyhow!("the producer failed"))
        });
        assert_eq!(r.unwrap_err().to_string(), "the producer failed");
    }

    #[test]
    fn an_output_error_stops_the_producer() {
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                if self.0 + b.len() > (1 << 20) {
                    return Err(io::Error::other("No space left on device"));
                }
                self.0 += b.len();
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut x: u64 = 1;
        let noise: Vec<u8> = (0..64 << 20)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        let r = pack(Compression::Zstd, 2, &mut Full(0), &|_| {}, |w| {
            w.write_all(&noise)?;
            Ok(())
        });
        let e = format!("{:#}", r.unwrap_err());
        assert!(e.contains("No space left on device"), "{e}");
    }
}
