//! # Layer compression
//!
//! A layer's compressed digest depends on the compressor's backend, level and chunking, so all
//! three are pinned here and are part of every layer's cache key ([`Compression::key`]).
//!
//! gzip is written by a parallel deflate in the style of pigz: the input is cut into
//! [`GZIP_CHUNK`]-byte chunks, each chunk is deflated on its own by a worker thread (zlib-rs
//! backend, level 6) and ended with a sync flush so that it stops on a byte boundary, and the raw
//! deflate pieces are joined into ONE gzip member with one CRC-32 over the whole input. The bytes
//! depend only on the input (not on the number of threads), and any gzip reader reads them.
//!
//! zstd is single-threaded at level 3, which is already faster than parallel gzip here.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::{Compress, FlushCompress};
use oci_spec::image::MediaType;

/// Input bytes per independently deflated chunk. Changing it changes every gzip digest.
pub const GZIP_CHUNK: usize = 1 << 20;
/// gzip level (zlib scale).
pub const GZIP_LEVEL: u32 = 6;
/// zstd level.
pub const ZSTD_LEVEL: i32 = 3;

/// The compression of layer blobs, chosen per recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> MediaType {
        match self {
            Compression::Gzip => MediaType::ImageLayerGzip,
            Compression::Zstd => MediaType::ImageLayerZstd,
        }
    }

    /// Everything that determines the compressed bytes; goes into layer cache keys.
    pub fn key(self) -> String {
        match self {
            Compression::Gzip => {
                format!("gzip/zlib-rs/level={GZIP_LEVEL}/chunk={GZIP_CHUNK}/sync-flush")
            }
            Compression::Zstd => format!("zstd/level={ZSTD_LEVEL}/single-thread"),
        }
    }

    /// Wraps `inner` in a compressor of this kind.
    pub fn writer<'a, W: Write + 'a>(self, inner: W) -> io::Result<Box<dyn FinishWrite + 'a>> {
        Ok(match self {
            Compression::Gzip => Box::new(ParallelGzip::new(inner, worker_count())),
            Compression::Zstd => Box::new(ZstdWriter(Some(zstd::Encoder::new(inner, ZSTD_LEVEL)?))),
        })
    }

    /// Wraps `inner` in a decompressor for blobs of `media_type`.
    pub fn reader_for<'a, R: io::Read + 'a>(
        media_type: &MediaType,
        inner: R,
    ) -> io::Result<Box<dyn io::Read + 'a>> {
        Ok(match media_type {
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
                Box::new(flate2::read::MultiGzDecoder::new(inner))
            }
            MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
                Box::new(zstd::Decoder::new(inner)?)
            }
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Box::new(inner),
            MediaType::Other(s) if s.ends_with("tar+gzip") || s.ends_with(".tar.gzip") => {
                Box::new(flate2::read::MultiGzDecoder::new(inner))
            }
            MediaType::Other(s) if s.ends_with("tar") || s.ends_with(".tar") => Box::new(inner),
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not a layer media type: {other}"),
                ));
            }
        })
    }
}

/// A writer that must be told when the stream ends.
pub trait FinishWrite: Write {
    fn finish(self: Box<Self>) -> io::Result<()>;
}

fn worker_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

struct ZstdWriter<W: Write>(Option<zstd::Encoder<'static, W>>);

impl<W: Write> Write for ZstdWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .as_mut()
            .expect("zstd writer used after finish")
            .write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0
            .as_mut()
            .expect("zstd writer used after finish")
            .flush()
    }
}

impl<W: Write> FinishWrite for ZstdWriter<W> {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        let mut inner = self.0.take().expect("finish called twice").finish()?;
        inner.flush()
    }
}

/// Deflates one chunk on its own, ending with a sync flush (so it ends on a byte boundary and
/// the next chunk's deflate data can follow it directly).
pub fn deflate_chunk(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(flate2::Compression::new(level), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    let mut input = data;
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(4096));
        }
        let before_in = c.total_in();
        c.compress_vec(input, &mut out, FlushCompress::Sync)
            .map_err(|e| io::Error::other(format!("deflate: {e}")))?;
        let consumed = (c.total_in() - before_in) as usize;
        input = &input[consumed..];
        // Done once all input is consumed and the flush had room to complete.
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(out);
        }
    }
}

/// The final, empty deflate block that ends the stream.
fn deflate_final(level: u32) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(flate2::Compression::new(level), false);
    let mut out = Vec::with_capacity(64);
    c.compress_vec(&[], &mut out, FlushCompress::Finish)
        .map_err(|e| io::Error::other(format!("deflate: {e}")))?;
    Ok(out)
}

type Job = (u64, Vec<u8>);
type Done = (u64, io::Result<Vec<u8>>);

/// A gzip writer that deflates fixed-size chunks on worker threads (see the module docs).
pub struct ParallelGzip<W: Write> {
    inner: W,
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
    total: u64,
    next_job: u64,
    next_write: u64,
    pending: std::collections::BTreeMap<u64, Vec<u8>>,
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    workers: Vec<JoinHandle<()>>,
    header_written: bool,
    max_in_flight: u64,
}

impl<W: Write> ParallelGzip<W> {
    pub fn new(inner: W, threads: usize) -> Self {
        let (job_tx, job_rx) = sync_channel::<Job>(threads * 2);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Done>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let workers = (0..threads)
            .map(|_| {
                let rx = Arc::clone(&job_rx);
                let tx = done_tx.clone();
                std::thread::spawn(move || {
                    loop {
                        let job = rx.lock().expect("gzip job queue poisoned").recv();
                        let Ok((idx, data)) = job else { return };
                        if tx.send((idx, deflate_chunk(&data, GZIP_LEVEL))).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        ParallelGzip {
            inner,
            buf: Vec::with_capacity(GZIP_CHUNK),
            crc: crc32fast::Hasher::new(),
            total: 0,
            next_job: 0,
            next_write: 0,
            pending: Default::default(),
            jobs: Some(job_tx),
            done: done_rx,
            workers,
            header_written: false,
            max_in_flight: (threads as u64) * 3 + 1,
        }
    }

    fn write_header(&mut self) -> io::Result<()> {
        if !self.header_written {
            // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=255 (unknown): no host-dependent field.
            self.inner
                .write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
            self.header_written = true;
        }
        Ok(())
    }

    fn submit(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(GZIP_CHUNK));
        let idx = self.next_job;
        self.next_job += 1;
        self.jobs
            .as_ref()
            .expect("gzip writer used after finish")
            .send((idx, data))
            .map_err(|_| io::Error::other("gzip worker thread ended"))?;
        // Bound the memory in flight: wait for the oldest results when too many are out.
        while self.next_job - self.next_write > self.max_in_flight {
            self.collect_one()?;
        }
        self.drain_ready()
    }

    fn collect_one(&mut self) -> io::Result<()> {
        let (idx, res) = self
            .done
            .recv()
            .map_err(|_| io::Error::other("gzip worker thread ended"))?;
        self.pending.insert(idx, res?);
        self.write_in_order()
    }

    fn drain_ready(&mut self) -> io::Result<()> {
        while let Ok((idx, res)) = self.done.try_recv() {
            self.pending.insert(idx, res?);
        }
        self.write_in_order()
    }

    fn write_in_order(&mut self) -> io::Result<()> {
        self.write_header()?;
        while let Some(data) = self.pending.remove(&self.next_write) {
            self.inner.write_all(&data)?;
            self.next_write += 1;
        }
        Ok(())
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        self.crc.update(data);
        self.total += n as u64;
        while !data.is_empty() {
            let room = GZIP_CHUNK - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == GZIP_CHUNK {
                self.submit()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> FinishWrite for ParallelGzip<W> {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.submit()?;
        }
        while self.next_write < self.next_job {
            self.collect_one()?;
        }
        self.write_header()?;
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let fin = deflate_final(GZIP_LEVEL)?;
        self.inner.write_all(&fin)?;
        let crc = self.crc.clone().finalize();
        self.inner.write_all(&crc.to_le_bytes())?;
        self.inner.write_all(&(self.total as u32).to_le_bytes())?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for ParallelGzip<W> {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gzip(data: &[u8], threads: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Box::new(ParallelGzip::new(&mut out, threads));
        // Odd write sizes, to cross chunk boundaries in the middle of writes.
        for piece in data.chunks(777_777) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap();
        out
    }

    #[test]
    fn round_trips_and_is_independent_of_threads() {
        let mut data = Vec::new();
        for i in 0..(3 * GZIP_CHUNK + 12345) {
            data.push(((i * 7919) % 251) as u8 ^ (i >> 13) as u8);
        }
        let one = gzip(&data, 1);
        let four = gzip(&data, 4);
        assert_eq!(one, four, "output must not depend on the thread count");
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn empty_input_is_a_valid_gzip() {
        let out = gzip(&[], 2);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn zstd_round_trips() {
        let data = b"hello hadoop ".repeat(10_000);
        let mut out = Vec::new();
        let mut w = Compression::Zstd.writer(&mut out).unwrap();
        w.write_all(&data).unwrap();
        w.finish().unwrap();
        let mut back = Vec::new();
        Compression::reader_for(&MediaType::ImageLayerZstd, &out[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }
}
