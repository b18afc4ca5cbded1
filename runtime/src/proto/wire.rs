//! Protocol-buffer wire format: varints, tags and length-delimited fields,
//! read in place from a byte slice. Every read is bounds-checked and every
//! length overflow-checked, so hostile input ends in [`WireError`], never a
//! panic or an out-of-bounds read.

/// What went wrong while decoding the wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The buffer ended inside a field.
    Truncated,
    /// A varint was longer than 10 bytes.
    VarintTooLong,
    /// A wire type this reader does not know (3/4 are deprecated groups).
    BadWireType(u8),
    /// Field number 0 is reserved.
    BadFieldNumber,
}

/// Wire type of a field, the low three bits of its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireType {
    /// int32/int64/uint/bool/enum.
    Varint,
    /// fixed64/double.
    Fixed64,
    /// bytes, string, sub-message, packed repeated.
    Len,
    /// fixed32/float.
    Fixed32,
}

/// One decoded field: its number and its payload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Field<'a> {
    /// A varint payload.
    Varint(u32, u64),
    /// A 64-bit fixed payload.
    Fixed64(u32, u64),
    /// A length-delimited payload.
    Len(u32, &'a [u8]),
    /// A 32-bit fixed payload.
    Fixed32(u32, u32),
}

impl Field<'_> {
    /// The field number.
    pub fn number(&self) -> u32 {
        match *self {
            Field::Varint(n, _)
            | Field::Fixed64(n, _)
            | Field::Len(n, _)
            | Field::Fixed32(n, _) => n,
        }
    }
}

/// Reads one varint from `buf` at `*pos`, advancing `*pos`.
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let byte = *buf.get(*pos).ok_or(WireError::Truncated)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::VarintTooLong)
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, len: usize) -> Result<&'a [u8], WireError> {
    let end = pos.checked_add(len).ok_or(WireError::Truncated)?;
    let bytes = buf.get(*pos..end).ok_or(WireError::Truncated)?;
    *pos = end;
    Ok(bytes)
}

/// Iterator over the fields of one message. Stops (with `Some(Err)`, then
/// `None`) at the first malformed field.
#[derive(Clone, Debug)]
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Fields<'a> {
    /// Iterates over the fields encoded in `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Fields {
            buf,
            pos: 0,
            failed: false,
        }
    }

    /// Byte offset of the next field within the message.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn next_field(&mut self) -> Result<Field<'a>, WireError> {
        let tag = read_varint(self.buf, &mut self.pos)?;
        let number = u32::try_from(tag >> 3).map_err(|_| WireError::BadFieldNumber)?;
        if number == 0 {
            return Err(WireError::BadFieldNumber);
        }
        Ok(match tag & 7 {
            0 => Field::Varint(number, read_varint(self.buf, &mut self.pos)?),
            1 => {
                let b = take(self.buf, &mut self.pos, 8)?;
                Field::Fixed64(
                    number,
                    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
                )
            }
            2 => {
                let len = read_varint(self.buf, &mut self.pos)?;
                let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
                Field::Len(number, take(self.buf, &mut self.pos, len)?)
            }
            5 => {
                let b = take(self.buf, &mut self.pos, 4)?;
                Field::Fixed32(number, u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            other => return Err(WireError::BadWireType(other as u8)),
        })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let field = self.next_field();
        self.failed = field.is_err();
        Some(field)
    }
}

/// Iterator over a packed repeated varint field (or a single unpacked value).
#[derive(Clone, Debug)]
pub struct PackedVarints<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> PackedVarints<'a> {
    /// Iterates over the varints packed in `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        PackedVarints { buf, pos: 0 }
    }
}

impl Iterator for PackedVarints<'_> {
    type Item = Result<u64, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let v = read_varint(self.buf, &mut self.pos);
        if v.is_err() {
            self.pos = self.buf.len();
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_wire_type() {
        // field 1 varint 150, field 2 len "hi", field 3 fixed32 1.0f, field 4 fixed64 7
        let mut buf = vec![0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i', 0x1d];
        buf.extend_from_slice(&1.0f32.to_le_bytes());
        buf.push(0x21);
        buf.extend_from_slice(&7u64.to_le_bytes());
        let fields: Vec<_> = Fields::new(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            fields,
            vec![
                Field::Varint(1, 150),
                Field::Len(2, b"hi"),
                Field::Fixed32(3, 1.0f32.to_bits()),
                Field::Fixed64(4, 7)
            ]
        );
    }

    #[test]
    fn rejects_truncation_and_bad_types() {
        assert_eq!(
            Fields::new(&[0x12, 0x05, 1]).next(),
            Some(Err(WireError::Truncated))
        );
        assert_eq!(
            Fields::new(&[0x0b]).next(),
            Some(Err(WireError::BadWireType(3)))
        );
        assert_eq!(
            Fields::new(&[0x00, 0x00]).next(),
            Some(Err(WireError::BadFieldNumber))
        );
        let long = [0xffu8; 11];
        assert_eq!(read_varint(&long, &mut 0), Err(WireError::VarintTooLong));
        // a length near usize::MAX must not overflow
        let huge = [
            0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert_eq!(Fields::new(&huge).next(), Some(Err(WireError::Truncated)));
    }

    #[test]
    fn packed_varints() {
        let v: Vec<u64> = PackedVarints::new(&[1, 0x96, 0x01, 3])
            .map(Result::unwrap)
            .collect();
        assert_eq!(v, vec![1, 150, 3]);
    }
}
