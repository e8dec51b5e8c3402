//! gzip for `/metrics`, compressed in parallel with the render.
//!
//! One gzip stream (RFC 1952) whose deflate data is made of independent segments, one per chunk
//! of the exposition, as pigz does: each segment is raw deflate from a fresh compressor, ended by
//! a sync flush (an empty stored block, so it ends on a byte boundary, not final) except the last,
//! which ends with the final block. No segment refers back into another, so they concatenate into
//! one valid deflate stream, and each can be compressed on its own thread while the next chunk is
//! still being rendered. The trailer's CRC-32 combines the segments' CRCs. What this costs in
//! size: every segment starts with an empty window, about 1 % at 256 KiB segments.

use std::cell::RefCell;
use std::io;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use axum::body::Bytes;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// zlib level 2 (zlib-rs' `deflate_fast`): level 1 (`deflate_quick`, static Huffman codes) is
/// faster but leaves the M exposition at 1/7 of its size, level 2 at 1/10 (docs/benchmarks.md).
const LEVEL: u32 = 2;

/// A gzip header with no name, no time and an unknown OS, as most encoders write it.
pub const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// One chunk, compressed.
pub struct Segment {
    pub deflate: Bytes,
    crc: Crc,
}

thread_local! {
    /// A compressor per thread, reset for every segment (allocating one costs more than a small
    /// segment's compression).
    static DEFLATE: RefCell<Option<Compress>> = const { RefCell::new(None) };
}

/// A chunk to compress, and where its segment goes.
struct Job {
    chunk: String,
    last: bool,
    reply: tokio::sync::oneshot::Sender<io::Result<Segment>>,
    /// Where the emptied chunk goes back to its writer, to be filled again.
    recycle: mpsc::Sender<String>,
}

/// The compressing threads: as many as the host has cores (at most 4), started at the first
/// gzip answer and shared by every answer. A fixed set rather than tokio's blocking pool keeps
/// the compressors' state and the allocator's per-thread heaps to a few threads: with a thread
/// per segment in flight, peak RSS at M went from 58 to 82 MiB (docs/benchmarks.md).
static POOL: OnceLock<mpsc::Sender<Job>> = OnceLock::new();

fn pool() -> &'static mpsc::Sender<Job> {
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("gzip-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(mut job) = job else { return };
                        // The answer may be gone (client away): nothing to tell then.
                        let _ = job.reply.send(segment(job.chunk.as_bytes(), job.last));
                        job.chunk.clear();
                        let _ = job.recycle.send(job.chunk);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!("cannot start a gzip thread: {e}");
            }
        }
        tx
    })
}

/// Compresses `chunk` on the gzip threads, then hands the emptied chunk to `recycle`; the
/// receiver gets its segment, or is closed if no thread could take it.
pub fn spawn(
    chunk: String,
    last: bool,
    recycle: mpsc::Sender<String>,
) -> tokio::sync::oneshot::Receiver<io::Result<Segment>> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    let _ = pool().send(Job {
        chunk,
        last,
        reply,
        recycle,
    });
    rx
}

/// Compresses `chunk` as one segment; `last` ends the deflate stream.
pub fn segment(chunk: &[u8], last: bool) -> io::Result<Segment> {
    let mut crc = Crc::new();
    crc.update(chunk);
    let deflate = DEFLATE.with_borrow_mut(|compress| {
        let compress =
            compress.get_or_insert_with(|| Compress::new(Compression::new(LEVEL), false));
        compress.reset();
        deflate(compress, chunk, last)
    })?;
    Ok(Segment {
        deflate: Bytes::from(deflate),
        crc,
    })
}

fn deflate(compress: &mut Compress, chunk: &[u8], last: bool) -> io::Result<Vec<u8>> {
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    // The exposition compresses about 10x: room for 8x, grown when a chunk needs more.
    let mut out = Vec::with_capacity(chunk.len() / 8 + 1024);
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity());
        }
        let consumed = compress.total_in() as usize;
        let status = compress
            .compress_vec(&chunk[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let consumed = compress.total_in() as usize;
        // A flush is complete when it returns with output space to spare (zlib's rule).
        let done = match status {
            Status::StreamEnd => true,
            Status::Ok | Status::BufError => {
                !last && consumed == chunk.len() && out.len() < out.capacity()
            }
        };
        if done {
            // Exactly sized for the time the segment waits for the client, and the spare room
            // freed on this thread, where the next segment reuses it.
            out.shrink_to_fit();
            return Ok(out);
        }
    }
}

/// The CRC-32 and length of everything compressed so far, for the trailer.
#[derive(Default)]
pub struct Trailer(Crc);

impl Trailer {
    pub fn add(&mut self, segment: &Segment) {
        self.0.combine(&segment.crc);
    }

    /// CRC-32 and the length modulo 2^32, little-endian.
    pub fn bytes(&self) -> Bytes {
        let mut t = Vec::with_capacity(8);
        t.extend_from_slice(&self.0.sum().to_le_bytes());
        t.extend_from_slice(&self.0.amount().to_le_bytes());
        Bytes::from(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    fn gzip(chunks: &[&[u8]]) -> Vec<u8> {
        let mut trailer = Trailer::default();
        let mut out = HEADER.to_vec();
        for (i, chunk) in chunks.iter().enumerate() {
            let s = segment(chunk, i + 1 == chunks.len()).expect("compresses");
            trailer.add(&s);
            out.extend_from_slice(&s.deflate);
        }
        out.extend_from_slice(&trailer.bytes());
        out
    }

    fn gunzip(body: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        // Not MultiGzDecoder: the segments must make one member, as a strict client reads it.
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut plain)
            .expect("one gzip member");
        plain
    }

    fn text(lines: usize, seed: u64) -> Vec<u8> {
        (0..lines)
            .map(|i| {
                format!(
                    "kapso_metric{{workflow_id=\"wf-{}\"}} {i}\n",
                    seed * 7919 + i as u64 % 97
                )
            })
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn segments_make_one_gzip_member_with_the_whole_text() {
        let parts: Vec<Vec<u8>> = (0..5).map(|i| text(3000 + i * 10, i as u64)).collect();
        let chunks: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let body = gzip(&chunks);
        assert_eq!(gunzip(&body), parts.concat());
        assert!(
            body.len() * 8 < parts.concat().len(),
            "{} bytes",
            body.len()
        );
    }

    #[test]
    fn an_empty_last_segment_and_a_lone_one_are_valid() {
        let a = text(100, 1);
        assert_eq!(gunzip(&gzip(&[&a, b""])), a);
        assert_eq!(gunzip(&gzip(&[b""])), b"");
        assert_eq!(gunzip(&gzip(&[&a])), a);
    }

    #[test]
    fn incompressible_segments_grow_the_output_buffer() {
        // xorshift bytes: deflate stores them, so the output is larger than the first guess.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let body = gzip(&[&noise, &noise[..1000]]);
        assert_eq!(gunzip(&body), [&noise[..], &noise[..1000]].concat());
    }

    #[test]
    fn the_trailer_holds_the_crc_and_length_of_the_whole_text() {
        let (a, b) = (text(500, 2), text(700, 3));
        let body = gzip(&[&a, &b]);
        let mut whole = Crc::new();
        whole.update(&[a.clone(), b.clone()].concat());
        let t = &body[body.len() - 8..];
        assert_eq!(t[..4], whole.sum().to_le_bytes());
        assert_eq!(t[4..], ((a.len() + b.len()) as u32).to_le_bytes());
    }
}
