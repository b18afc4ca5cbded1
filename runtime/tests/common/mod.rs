//! A minimal ONNX protobuf writer shared by the runtime's integration
//! tests (each test file is its own crate and uses a different subset).
#![allow(dead_code)]

pub fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn field_varint(out: &mut Vec<u8>, field: u64, v: i64) {
    varint(out, field << 3);
    varint(out, v as u64);
}

pub fn field_bytes(out: &mut Vec<u8>, field: u64, data: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

pub fn tensor(name: &str, dtype: i64, dims: &[i64], raw: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        field_varint(&mut t, 1, d);
    }
    field_varint(&mut t, 2, dtype);
    field_bytes(&mut t, 8, name.as_bytes());
    field_bytes(&mut t, 9, raw);
    t
}

pub fn value_info(name: &str, dtype: i64, dims: &[i64]) -> Vec<u8> {
    let mut shape = Vec::new();
    for &d in dims {
        let mut dim = Vec::new();
        field_varint(&mut dim, 1, d);
        field_bytes(&mut shape, 1, &dim);
    }
    let mut tensor_type = Vec::new();
    field_varint(&mut tensor_type, 1, dtype);
    field_bytes(&mut tensor_type, 2, &shape);
    let mut ty = Vec::new();
    field_bytes(&mut ty, 1, &tensor_type);
    let mut v = Vec::new();
    field_bytes(&mut v, 1, name.as_bytes());
    field_bytes(&mut v, 2, &ty);
    v
}

pub fn attr_int(name: &str, value: i64) -> Vec<u8> {
    let mut a = Vec::new();
    field_bytes(&mut a, 1, name.as_bytes());
    field_varint(&mut a, 3, value);
    field_varint(&mut a, 20, 2);
    a
}

pub fn attr_ints(name: &str, values: &[i64]) -> Vec<u8> {
    let mut a = Vec::new();
    field_bytes(&mut a, 1, name.as_bytes());
    for &v in values {
        field_varint(&mut a, 8, v);
    }
    field_varint(&mut a, 20, 7);
    a
}

pub fn le<T: Copy, const N: usize>(values: &[T], to: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to(v)).collect()
}
