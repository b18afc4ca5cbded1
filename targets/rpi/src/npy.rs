//! The little of the `.npy` format this app needs: reading a little-endian
//! f32, C-order array (format versions 1.0–3.0) and writing one (1.0).

/// The elements and shape of a little-endian f32, C-order `.npy` array.
pub fn read_f32(bytes: &[u8]) -> Result<(Vec<f32>, Vec<usize>), String> {
    let rest = bytes
        .strip_prefix(b"\x93NUMPY")
        .ok_or("not a .npy file (bad magic)")?;
    let (header_len, header_start) = match rest.first() {
        Some(1) if rest.len() >= 4 => (usize::from(u16::from_le_bytes([rest[2], rest[3]])), 10),
        Some(2 | 3) if rest.len() >= 6 => {
            let len = u32::from_le_bytes([rest[2], rest[3], rest[4], rest[5]]);
            (usize::try_from(len).map_err(|_| "header too long")?, 12)
        }
        Some(v) => return Err(format!("unsupported .npy format version {v}")),
        None => return Err("truncated .npy file".into()),
    };
    let data_start = header_start + header_len;
    let header = bytes
        .get(header_start..data_start)
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "non-UTF-8 .npy header")?;
    let compact: String = header.chars().filter(|c| !c.is_whitespace()).collect();
    let descr = field(&compact, "descr")
        .and_then(|d| d.split(['\'', '"']).nth(1))
        .ok_or("no dtype ('descr') in the .npy header")?;
    if descr != "<f4" {
        return Err(format!(
            "dtype '{descr}': only little-endian float32 ('<f4') is supported \
             (convert with `x.astype('<f4')`)"
        ));
    }
    if field(&compact, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err("Fortran-order array: only C order is supported \
                    (save `np.ascontiguousarray(x)`)"
            .into());
    }
    let dims = field(&compact, "shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or("no shape in the .npy header")?;
    let shape = dims
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::parse::<usize>)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| format!("bad shape ({dims}) in the .npy header"))?;
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or("shape too large")?;
    let data = &bytes[data_start..];
    if count.checked_mul(4) != Some(data.len()) {
        return Err(format!(
            "shape ({dims}) holds {count} f32s but the file has {} data bytes",
            data.len()
        ));
    }
    let values = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((values, shape))
}

/// The text after `'key':` in a whitespace-free header dict.
fn field<'h>(compact: &'h str, key: &str) -> Option<&'h str> {
    let at = compact.find(&format!("'{key}':"))?;
    Some(&compact[at + key.len() + 3..])
}

/// A `.npy` file (format 1.0) holding `values` as a little-endian f32,
/// C-order array of shape `shape`.
pub fn write_f32(values: &[f32], shape: &[usize]) -> Vec<u8> {
    // As numpy writes it: `(10,)` for one dim, `(1, 10)` otherwise.
    let dims = match shape {
        [d] => format!("{d},"),
        _ => shape
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    // Magic (6) + version (2) + length (2) + header, padded with spaces and
    // ended by a newline so the data starts on a 64-byte boundary.
    let unpadded = 10 + header.len() + 1;
    header.extend(std::iter::repeat_n(
        ' ',
        unpadded.next_multiple_of(64) - unpadded,
    ));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + values.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(
        &u16::try_from(header.len())
            .unwrap_or(u16::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_bit_exactly() {
        let values = [1.5f32, -0.0, f32::MIN_POSITIVE, 3.0e38, -7.25, 0.1];
        for shape in [vec![6], vec![1, 6], vec![2, 3], vec![1, 1, 2, 3]] {
            let bytes = write_f32(&values, &shape);
            assert_eq!((bytes.len() - values.len() * 4) % 64, 0);
            let (got, got_shape) = read_f32(&bytes).unwrap();
            assert_eq!(got_shape, shape);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&values));
        }
    }

    #[test]
    fn reads_a_scalar() {
        let bytes = write_f32(&[2.0], &[]);
        assert_eq!(read_f32(&bytes).unwrap(), (vec![2.0], vec![]));
    }

    #[test]
    fn rejects_other_dtypes_and_orders() {
        let mut bytes = write_f32(&[1.0, 2.0], &[2]);
        let at = bytes.windows(3).position(|w| w == b"<f4").unwrap();
        bytes[at..at + 3].copy_from_slice(b"<f8");
        assert!(read_f32(&bytes).unwrap_err().contains("'<f8'"));
        let mut bytes = write_f32(&[1.0, 2.0], &[2]);
        let at = bytes.windows(5).position(|w| w == b"False").unwrap();
        bytes[at..at + 5].copy_from_slice(b"True ");
        assert!(read_f32(&bytes).unwrap_err().contains("Fortran"));
        assert!(read_f32(b"PK\x03\x04").unwrap_err().contains("magic"));
        let bytes = write_f32(&[1.0, 2.0], &[3]);
        assert!(read_f32(&bytes).unwrap_err().contains("holds 3"));
    }
}
