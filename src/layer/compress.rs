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
//! zstd is written the same way: the input is cut into [`ZSTD_FRAME`]-byte chunks, each chunk
//! is compressed into an independent zstd frame (level 3, content size and checksum in each
//! frame) on a worker thread, and the frames are concatenated, which every zstd reader reads as
//! one stream. Again the bytes depend only on the input (and the pinned libzstd of `Cargo.lock`).
//!
//! The threads, the order of the pieces and the hashes are the business of
//! [`crate::layer::pipeline`]; this module says what each piece is.

use std::io;

use flate2::{Compress, FlushCompress};
use oci_spec::image::MediaType;

/// Input bytes per independently deflated chunk. Changing it changes every gzip digest.
pub const GZIP_CHUNK: usize = 1 << 20;
/// gzip level (zlib scale).
pub const GZIP_LEVEL: u32 = 6;
/// zstd level.
pub const ZSTD_LEVEL: i32 = 3;
/// Input bytes per independent zstd frame. Changing it changes every zstd digest.
pub const ZSTD_FRAME: usize = 2 << 20;

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
            Compression::Zstd => {
                format!("zstd/level={ZSTD_LEVEL}/frames={ZSTD_FRAME}/checksum")
            }
        }
    }

    /// Input bytes per independently compressed piece.
    pub fn chunk_size(self) -> usize {
        match self {
            Compression::Gzip => GZIP_CHUNK,
            Compression::Zstd => ZSTD_FRAME,
        }
    }

    /// Whether [`Compression::epilogue`] needs the CRC-32 of the whole input.
    pub fn needs_crc(self) -> bool {
        self == Compression::Gzip
    }

    /// The bytes before the first piece.
    pub fn prologue(self) -> &'static [u8] {
        match self {
            // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=255 (unknown): no host-dependent field.
            Compression::Gzip => &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff],
            Compression::Zstd => &[],
        }
    }

    /// The bytes after the last piece, for an input of `len` bytes with CRC-32 `crc`.
    pub fn epilogue(self, crc: u32, len: u64) -> io::Result<Vec<u8>> {
        Ok(match self {
            Compression::Gzip => {
                let mut out = deflate_final(GZIP_LEVEL)?;
                out.extend_from_slice(&crc.to_le_bytes());
                // ISIZE is the length modulo 2^32 (RFC 1952).
                out.extend_from_slice(&(len as u32).to_le_bytes());
                out
            }
            // One empty frame, not an empty file, for an empty input: zstd readers want a frame.
            Compression::Zstd if len == 0 => self.piece_compressor()?.compress(&[])?,
            Compression::Zstd => vec![],
        })
    }

    /// A compressor of pieces, one per worker thread (it keeps its context between pieces).
    pub fn piece_compressor(self) -> io::Result<PieceCompressor> {
        Ok(match self {
            Compression::Gzip => PieceCompressor::Gzip,
            Compression::Zstd => {
                let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
                c.include_checksum(true)?;
                c.include_contentsize(true)?;
                PieceCompressor::Zstd(c)
            }
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

/// Compresses one chunk of input into its piece of the output (see the module docs).
pub enum PieceCompressor {
    Gzip,
    Zstd(zstd::bulk::Compressor<'static>),
}

impl PieceCompressor {
    pub fn compress(&mut self, chunk: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            PieceCompressor::Gzip => deflate_chunk(chunk, GZIP_LEVEL),
            PieceCompressor::Zstd(c) => c.compress(chunk),
        }
    }
}

/// The number of compression threads of one layer.
pub fn worker_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read;

    /// `data` compressed on `threads` workers, written in odd-sized pieces (to cross chunk
    /// boundaries in the middle of writes).
    pub(crate) fn compress(c: Compression, data: &[u8], threads: usize) -> Vec<u8> {
        let mut out = Vec::new();
        crate::layer::pipeline::pack(c, threads, &mut out, &|_| {}, |w| {
            for piece in data.chunks(777_777) {
                w.write_all(piece)?;
            }
            Ok(())
        })
        .unwrap();
        out
    }

    fn decompress(c: Compression, data: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        Compression::reader_for(&c.media_type(), data)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        back
    }

    /// A fixed input, several chunks long, neither constant nor random.
    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i * 7919) % 251) as u8 ^ (i >> 13) as u8)
            .collect()
    }

    #[test]
    fn round_trips_and_is_independent_of_threads() {
        for c in [Compression::Gzip, Compression::Zstd] {
            let data = sample(3 * c.chunk_size() + 12345);
            let one = compress(c, &data, 1);
            let four = compress(c, &data, 4);
            assert!(
                one == four,
                "{c:?}: output must not depend on the thread count"
            );
            assert!(decompress(c, &one) == data, "{c:?}: round trip");
        }
    }

    #[test]
    fn empty_input_is_a_valid_stream() {
        for c in [Compression::Gzip, Compression::Zstd] {
            let out = compress(c, &[], 2);
            assert!(decompress(c, &out).is_empty(), "{c:?}");
        }
    }

    #[test]
    fn gzip_is_one_member_any_reader_reads() {
        let data = sample(2 * GZIP_CHUNK + 1);
        let out = compress(Compression::Gzip, &data, 2);
        let mut back = Vec::new();
        // A single-member decoder reads it all: one member.
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data);
    }

    /// The zstd bytes are pinned: a change of libzstd, level, frame size or flags moves this
    /// digest, and must bump [`Compression::key`].
    #[test]
    fn zstd_bytes_are_pinned() {
        let data = sample(2 * ZSTD_FRAME + 4321);
        let out = compress(Compression::Zstd, &data, 3);
        assert_eq!(
            crate::support::hash::sha256_of(&out).to_string(),
            "sha256:69794c50e16a72fa1b836500b7885f47ba0fe753a66ba75b09af3a985d618aeb"
        );
        assert_eq!(
            Compression::Zstd.key(),
            format!("zstd/level=3/frames={ZSTD_FRAME}/checksum")
        );
    }

    #[test]
    fn gzip_bytes_are_pinned() {
        let data = sample(2 * GZIP_CHUNK + 4321);
        let out = compress(Compression::Gzip, &data, 3);
        assert_eq!(
            crate::support::hash::sha256_of(&out).to_string(),
            "sha256:19d952ecb7c2aef1722d313c7324d0c1ee6e743342c5c6a339cea7df45b93a79"
        );
    }
}
