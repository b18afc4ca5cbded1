//! IDX files (the MNIST family's format): a big-endian `u32` magic
//! `0x0000_08RR` (`08` = u8 data, `RR` = rank), `RR` big-endian `u32`
//! dimensions, then the data, row-major. Gzip-compressed files are detected
//! by their magic bytes, not their name.

use super::DataError;
use std::io::{self, Read};
use std::path::Path;

/// Preallocating more than this on a header's word alone would let a corrupt
/// header exhaust memory before the truncation is noticed.
const MAX_PREALLOC: usize = 256 << 20;

/// The contents of an IDX file holding unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Idx {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The data, row-major; its length is the product of `dims`.
    pub data: Vec<u8>,
}

/// The magic of a u8 IDX file of the given rank.
pub fn magic_u8(rank: u8) -> u32 {
    0x0800 | u32::from(rank)
}

fn describe(rank: u8) -> String {
    match rank {
        1 => "IDX u8 labels".into(),
        3 => "IDX u8 images".into(),
        r => format!("IDX u8, rank {r}"),
    }
}

/// Formats dimensions as `60000×28×28`.
pub fn dims_string(dims: &[usize]) -> String {
    dims.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("×")
}

/// Reads a u8 IDX file of the given rank (`.gz` or plain), checking its
/// magic, its dimensions and that its length is exactly what they promise.
pub fn read_idx(path: &Path, rank: u8) -> Result<Idx, DataError> {
    let bytes = std::fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => DataError::Missing { path: path.into() },
        _ => DataError::Io {
            path: path.into(),
            source,
        },
    })?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        // Multi-member, so that anything after the first member must itself
        // be gzip: trailing garbage is an error rather than silently ignored.
        let decoder = flate2::bufread::MultiGzDecoder::new(&bytes[..]);
        parse(path, decoder, rank, true)
    } else {
        parse(path, &bytes[..], rank, false)
    }
}

fn parse(path: &Path, mut r: impl Read, rank: u8, gz: bool) -> Result<Idx, DataError> {
    // A plain slice cannot fail, so any read error is the decoder's.
    let io_err = |source| DataError::Gzip {
        path: path.into(),
        source,
    };
    let short = |what: &str| DataError::BadHeader {
        path: path.into(),
        reason: format!(
            "{}too short for an IDX header ({what})",
            if gz { "decompressed data " } else { "" }
        ),
    };

    let mut word = [0u8; 4];
    if read_full(&mut r, &mut word).map_err(io_err)? < 4 {
        return Err(short("no magic"));
    }
    let found = u32::from_be_bytes(word);
    let expected = magic_u8(rank);
    if found != expected {
        return Err(DataError::BadMagic {
            path: path.into(),
            found,
            expected,
            what: describe(rank),
        });
    }

    let mut dims = Vec::with_capacity(rank.into());
    for i in 0..rank {
        if read_full(&mut r, &mut word).map_err(io_err)? < 4 {
            return Err(short(&format!("dimension {i} of {rank} missing")));
        }
        dims.push(u32::from_be_bytes(word) as usize);
    }
    let total = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DataError::BadHeader {
            path: path.into(),
            reason: format!("dimensions {} overflow", dims_string(&dims)),
        })?;

    let mut data = Vec::with_capacity(total.min(MAX_PREALLOC));
    (&mut r)
        .take(total as u64)
        .read_to_end(&mut data)
        .map_err(io_err)?;
    if data.len() < total {
        return Err(DataError::Truncated {
            path: path.into(),
            dims: dims_string(&dims),
            expected: total,
            got: data.len(),
        });
    }
    let extra = io::copy(&mut r, &mut io::sink()).map_err(io_err)?;
    if extra > 0 {
        return Err(DataError::Trailing {
            path: path.into(),
            dims: dims_string(&dims),
            expected: total,
            extra,
        });
    }
    Ok(Idx { dims, data })
}

/// Like `read_exact`, but reports how much was read instead of failing on a
/// short stream, so a short file is told apart from a corrupt one.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{gzip, idx_bytes, TempDir};

    #[test]
    fn reads_gz_and_plain() {
        let dir = TempDir::new("idx-ok");
        let data: Vec<u8> = (0..24).collect();
        let raw = idx_bytes(3, &[2, 3, 4], &data);
        let plain = dir.write("a-idx3-ubyte", &raw);
        let gz = dir.write("a-idx3-ubyte.gz", &gzip(&raw));
        for p in [plain, gz] {
            let idx = read_idx(&p, 3).unwrap();
            assert_eq!(idx.dims, vec![2, 3, 4]);
            assert_eq!(idx.data, data);
        }
        // Concatenated members (as `cat a.gz b.gz` makes) are one stream.
        let mut multi = gzip(&raw[..10]);
        multi.extend_from_slice(&gzip(&raw[10..]));
        let multi = dir.write("m-idx3-ubyte.gz", &multi);
        assert_eq!(read_idx(&multi, 3).unwrap().data, data);
        let labels = dir.write("l.gz", &gzip(&idx_bytes(1, &[3], &[1, 2, 3])));
        assert_eq!(read_idx(&labels, 1).unwrap().data, vec![1, 2, 3]);
        let empty = dir.write("e.gz", &gzip(&idx_bytes(3, &[0, 28, 28], &[])));
        assert_eq!(read_idx(&empty, 3).unwrap().dims, vec![0, 28, 28]);
    }

    fn err(name: &str, bytes: &[u8], rank: u8) -> (String, String) {
        let dir = TempDir::new("idx-bad");
        let p = dir.write(name, bytes);
        let e = read_idx(&p, rank).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
        (e, p.display().to_string())
    }

    #[test]
    fn bad_magic_names_file_and_both_magics() {
        let raw = idx_bytes(1, &[3], &[0, 1, 2]);
        let (e, p) = err("train-images-idx3-ubyte.gz", &gzip(&raw), 3);
        assert_eq!(
            e,
            format!("{p}: bad magic 0x00000801, expected 0x00000803 (IDX u8 images)")
        );
        let mut raw = idx_bytes(3, &[1, 1, 1], &[0]);
        raw[2] = 0x0d; // float data
        let (e, _) = err("f", &raw, 3);
        assert!(e.contains("bad magic 0x00000d03"), "{e}");
    }

    #[test]
    fn truncated_data_reports_counts() {
        let raw = idx_bytes(3, &[2, 3, 4], &[7; 24]);
        let (e, p) = err("t.gz", &gzip(&raw[..raw.len() - 5]), 3);
        assert_eq!(
            e,
            format!("{p}: truncated: header says 2×3×4 (24 bytes) but only 19 bytes follow")
        );
        let (e, _) = err("t", &raw[..6], 3);
        assert!(e.contains("too short for an IDX header"), "{e}");
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut raw = idx_bytes(1, &[3], &[0, 1, 2]);
        raw.extend_from_slice(b"xx");
        let (e, _) = err("l.gz", &gzip(&raw), 1);
        assert!(e.contains("2 trailing bytes"), "{e}");
        let (e, _) = err("l", &raw, 1);
        assert!(e.contains("2 trailing bytes"), "{e}");
        // Garbage after the gzip member itself.
        let mut gz = gzip(&idx_bytes(1, &[3], &[0, 1, 2]));
        gz.extend_from_slice(b"garbage!");
        let (e, _) = err("g.gz", &gz, 1);
        assert!(e.contains("corrupt gzip stream"), "{e}");
    }

    #[test]
    fn corrupt_gzip_is_reported() {
        let raw = idx_bytes(3, &[4, 28, 28], &[9; 4 * 28 * 28]);
        let mut gz = gzip(&raw);
        let mid = gz.len() / 2;
        for b in &mut gz[mid..mid + 8] {
            *b ^= 0xa5;
        }
        let (e, _) = err("c.gz", &gz, 3);
        assert!(e.contains("corrupt gzip stream"), "{e}");
        // Cut inside the deflate stream.
        let gz = gzip(&raw);
        let (e, _) = err("cut.gz", &gz[..gz.len() / 2], 3);
        assert!(e.contains("corrupt gzip stream"), "{e}");
    }

    #[test]
    fn overflowing_dims_are_rejected() {
        let mut raw = 0x0803u32.to_be_bytes().to_vec();
        for _ in 0..3 {
            raw.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        let (e, _) = err("o", &raw, 3);
        assert!(e.contains("overflow"), "{e}");
    }

    #[test]
    fn missing_file_says_how_to_install() {
        let e = read_idx(Path::new("/nonexistent/x-idx1-ubyte.gz"), 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/x-idx1-ubyte.gz: not found"),
            "{e}"
        );
        assert!(e.contains("apt-get install dataset-fashion-mnist"), "{e}");
    }
}
