//! Chunked transfer coding (RFC 9112 §7.1): an incremental decoder with hyper 1's rules, and
//! the framing the proxy writes.
//!
//! The decoder takes whatever bytes have arrived, hands out the body data as slices of them (no
//! copy) and says how much it consumed and whether the body ended. Its rules are hyper's, state
//! for state: a size line is hex digits (no overflow), optional whitespace, an extension up to
//! CR (a bare LF in it is an error; 16 KiB of extensions per body at most), then CRLF; the data is
//! followed by exactly CRLF; after the last chunk come trailer lines, each ended by CRLF, at most
//! [`super::MAX_HEADERS`] of them and `max_trailer_bytes` in all, that must parse as header
//! fields; then CRLF. Trailers are checked and dropped: the proxy does not forward them.

use super::MAX_HEADERS;

/// The most chunk-extension bytes a body may carry (hyper's limit).
const MAX_EXTENSION_BYTES: u64 = 16 * 1024;

/// A chunked body does not follow the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Size,
    SizeWhitespace,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// How far one call got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of the input consumed (all of it unless the body ended inside it).
    pub consumed: usize,
    /// The body has ended: what follows belongs to the next message.
    pub done: bool,
}

/// Decodes one chunked body, across as many calls as its bytes take to arrive.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Bytes of the current chunk still to come (or, while reading its size line, the size).
    remaining: u64,
    extension_bytes: u64,
    trailers: Vec<u8>,
    trailer_lines: usize,
    max_trailer_bytes: usize,
}

impl ChunkedDecoder {
    /// A decoder for a new body; `max_trailer_bytes` is the head limit (`max_header_bytes`).
    pub fn new(max_trailer_bytes: usize) -> Self {
        Self {
            state: State::Start,
            remaining: 0,
            extension_bytes: 0,
            trailers: Vec::new(),
            trailer_lines: 0,
            max_trailer_bytes,
        }
    }

    /// Whether the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes `input`, handing each run of body data to `data`, in order.
    pub fn decode<'a>(&mut self, input: &'a [u8], mut data: impl FnMut(&'a [u8])) -> Result<Decoded, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Data {
                let take = usize::try_from(self.remaining).unwrap_or(usize::MAX).min(input.len() - i);
                data(&input[i..i + take]);
                i += take;
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = self.step(b)?;
            if self.state == State::Done {
                return Ok(Decoded { consumed: i, done: true });
            }
        }
        Ok(Decoded { consumed: i, done: false })
    }

    fn step(&mut self, b: u8) -> Result<State, ChunkError> {
        Ok(match self.state {
            State::Start => {
                self.push_digit(b).ok_or(ChunkError)?;
                State::Size
            }
            State::Size => match b {
                b' ' | b'\t' => State::SizeWhitespace,
                b';' => State::Extension,
                b'\r' => State::SizeLf,
                _ => {
                    self.push_digit(b).ok_or(ChunkError)?;
                    State::Size
                }
            },
            State::SizeWhitespace => match b {
                b' ' | b'\t' => State::SizeWhitespace,
                b';' => State::Extension,
                b'\r' => State::SizeLf,
                _ => return Err(ChunkError),
            },
            State::Extension => match b {
                b'\r' => State::SizeLf,
                // Some implementations end a line at a bare LF: never let one through.
                b'\n' => return Err(ChunkError),
                _ => {
                    self.extension_bytes += 1;
                    if self.extension_bytes >= MAX_EXTENSION_BYTES {
                        return Err(ChunkError);
                    }
                    State::Extension
                }
            },
            State::SizeLf => match b {
                b'\n' if self.remaining == 0 => State::EndCr,
                b'\n' => State::Data,
                _ => return Err(ChunkError),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(ChunkError),
            },
            State::DataLf => match b {
                b'\n' => State::Start,
                _ => return Err(ChunkError),
            },
            State::EndCr => match b {
                b'\r' => {
                    if !self.trailers.is_empty() {
                        self.push_trailer(b)?;
                    }
                    State::EndLf
                }
                _ => {
                    self.push_trailer(b)?;
                    State::Trailer
                }
            },
            State::Trailer => {
                self.push_trailer(b)?;
                if b == b'\r' { State::TrailerLf } else { State::Trailer }
            }
            State::TrailerLf => match b {
                b'\n' => {
                    if self.trailer_lines >= MAX_HEADERS {
                        return Err(ChunkError);
                    }
                    self.trailer_lines += 1;
                    self.push_trailer(b)?;
                    State::EndCr
                }
                _ => return Err(ChunkError),
            },
            State::EndLf => match b {
                b'\n' => {
                    if !self.trailers.is_empty() {
                        self.push_trailer(b)?;
                        self.check_trailers()?;
                    }
                    State::Done
                }
                _ => return Err(ChunkError),
            },
            State::Data | State::Done => return Err(ChunkError),
        })
    }

    fn push_digit(&mut self, b: u8) -> Option<()> {
        let digit = (b as char).to_digit(16)?;
        self.remaining = self.remaining.checked_mul(16)?.checked_add(u64::from(digit))?;
        Some(())
    }

    fn push_trailer(&mut self, b: u8) -> Result<(), ChunkError> {
        if self.trailers.len() >= self.max_trailer_bytes {
            return Err(ChunkError);
        }
        self.trailers.push(b);
        Ok(())
    }

    /// The trailer section must be header fields, as hyper parses it.
    fn check_trailers(&self) -> Result<(), ChunkError> {
        let mut headers = vec![httparse::EMPTY_HEADER; self.trailer_lines];
        match httparse::parse_headers(&self.trailers, &mut headers) {
            Ok(httparse::Status::Complete(_)) => Ok(()),
            _ => Err(ChunkError),
        }
    }
}

/// Appends `data` to `out` as one chunk.
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    write_chunk_size(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends a chunk-size line.
pub fn write_chunk_size(out: &mut Vec<u8>, len: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = DIGITS[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk and an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut decoder = ChunkedDecoder::new(16 * 1024);
        let mut body = Vec::new();
        let mut at = 0;
        for piece in input.chunks(split.max(1)) {
            let got = decoder.decode(piece, |d| body.extend_from_slice(d))?;
            at += got.consumed;
            if got.done {
                return Ok((body, at));
            }
        }
        Err(ChunkError)
    }

    #[test]
    fn valid_bodies_decode_whatever_the_reads_look_like() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5;ext=\"1\"\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
            (b"5  \r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
            (b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n", b"hello"),
            (b"0\r\n\r\n", b""),
        ];
        for (input, body) in cases {
            for split in [1, 2, 3, 7, 1000] {
                let (got, consumed) = decode_all(input, split).unwrap_or_else(|_| panic!("{input:?} split {split}"));
                assert_eq!((got.as_slice(), consumed), (*body, input.len()), "{input:?} split {split}");
            }
        }
        // What follows the body is not consumed.
        let mut decoder = ChunkedDecoder::new(1024);
        let got = decoder.decode(b"0\r\n\r\nGET / HTTP/1.1", |_| {}).unwrap();
        assert_eq!(got, Decoded { consumed: 5, done: true });
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let bad: &[&[u8]] = &[
            b"zz\r\nhello\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloEXTRA\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello0\r\n\r\n",
            b"5;ext=\"a\r\nb\"\r\nhello\r\n0\r\n\r\n",
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nGET /bar/smuggled HTTP/1.1\r\n\r\n",
            b"5\r\nhello\r\n0\r\nX: 1\n\r\n",
            b"5\r\nhello\r\n0\r\n\r\r",
        ];
        for input in bad {
            assert_eq!(decode_all(input, 1000), Err(ChunkError), "{}", String::from_utf8_lossy(input));
        }
        let many: String = (0..101).map(|i| format!("T{i}: 1\r\n")).collect();
        let input = format!("0\r\n{many}\r\n");
        assert_eq!(decode_all(input.as_bytes(), 1000), Err(ChunkError), "too many trailers");
        let input = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(20_000));
        assert_eq!(decode_all(input.as_bytes(), 1000), Err(ChunkError), "extensions over the limit");
    }

    #[test]
    fn chunks_are_written_in_hex() {
        let mut out = Vec::new();
        write_chunk(&mut out, &[b'x'; 26]);
        write_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(out, [b"1a\r\n".as_slice(), &[b'x'; 26], b"\r\n0\r\n\r\n"].concat());
    }
}
