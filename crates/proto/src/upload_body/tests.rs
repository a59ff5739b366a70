//! The upload body both ways: what the device encodes the server decodes as the
//! derived form would, and every body past a cap or damaged is refused with its code.

use super::*;

fn body(json: &str) -> (String, Vec<u8>) {
    let z = zstd::encode_all(json.as_bytes(), 1).unwrap();
    (crc_header(&z), z)
}

fn limits(max_json: usize, max_entries: usize) -> UploadLimits {
    UploadLimits {
        max_body: UPLOAD_BODY_MAX_BYTES,
        max_json,
        max_entries,
    }
}

fn parse_with(
    crc: &str,
    z: &[u8],
    max_json: usize,
    max_entries: usize,
) -> Result<Upload, UploadBodyError> {
    decode(Some(crc), z, &limits(max_json, max_entries))
}

fn entry(i: usize) -> String {
    format!(
        r#"{{"seq_first":{i},"seq_last":{i},"table":"t","key":{i},"op":"insert","base_version":null,"user":"u","new":{{"id":{i}}}}}"#
    )
}

fn upload(n: usize, extra: &str) -> String {
    let entries: Vec<String> = (0..n).map(entry).collect();
    format!(
        r#"{{"upload_id":"{}","task":"t",{extra}"entries":[{}]}}"#,
        "a".repeat(32),
        entries.join(",")
    )
}

#[test]
fn parses_as_the_derived_form_does() {
    let text = upload(3, r#""epoch":"e","unknown":[1,{"x":2}],"#);
    let (h, z) = body(&text);
    let got = parse_with(&h, &z, 1 << 20, 3).unwrap();
    let mut want: Upload = serde_json::from_str(&text).unwrap();
    want.entries.truncate(3);
    assert_eq!(got, want);
}

#[test]
fn caps_refuse_with_413() {
    let (h, z) = body(&upload(4, ""));
    let e = parse_with(&h, &z, 1 << 20, 3).unwrap_err();
    assert_eq!(e.code(), ErrorCode::PayloadTooLarge, "{e:?}");
    assert!(e.to_string().contains("more than 3 entries"), "{e:?}");
    let text = upload(4, "");
    let e = parse_with(&h, &z, text.len() - 1, 10).unwrap_err();
    assert_eq!(e.code(), ErrorCode::PayloadTooLarge, "{e:?}");
    assert!(e.to_string().contains("decompressed"), "{e:?}");
    // Exactly at the cap passes.
    assert!(parse_with(&h, &z, text.len(), 10).is_ok());
    // Trailing bytes, missing fields, damage: 400 of their own.
    let (h, z) = body(&format!("{} x", upload(1, "")));
    assert_eq!(
        parse_with(&h, &z, 1 << 20, 3).unwrap_err().code(),
        ErrorCode::BadRequest
    );
    let (h, z) = body(r#"{"task":"t","entries":[]}"#);
    let e = parse_with(&h, &z, 1 << 20, 3).unwrap_err();
    assert!(e.to_string().contains("upload_id"), "{e:?}");
    let (h, mut z) = body(&upload(1, ""));
    z[5] ^= 1;
    assert_eq!(
        parse_with(&h, &z, 1 << 20, 3).unwrap_err().code(),
        ErrorCode::Damaged
    );
}

#[test]
fn what_the_device_encodes_the_server_decodes() {
    let want: Upload =
        serde_json::from_str(&upload(500, r#""epoch":"e","task_hash":"h","#)).unwrap();
    let enc = encode(&want).unwrap();
    assert_eq!(enc.json_len, serde_json::to_vec(&want).unwrap().len());
    assert_eq!(
        zstd::decode_all(&enc.body[..]).unwrap(),
        serde_json::to_vec(&want).unwrap()
    );
    let got = decode(
        Some(&crc_header(&enc.body)),
        &enc.body,
        &UploadLimits::PUBLISHED,
    )
    .unwrap();
    assert_eq!(got, want);
    assert!(enc.within(&UploadLimits::PUBLISHED, 500));
    assert!(!enc.within(&limits(1 << 20, 499), 500));
    assert!(!enc.within(&limits(enc.json_len - 1, 500), 500));
    let tight = UploadLimits {
        max_body: enc.body.len() - 1,
        ..UploadLimits::PUBLISHED
    };
    assert!(!enc.within(&tight, 500));
}

/// Devices compress with the slice stream's window (64 KiB), not level 1's 512 KiB for
/// a body of unknown size: the server's decoder allocates the window the body asks for.
#[test]
fn devices_compress_with_a_window_of_64_kib() {
    let enc = encode(&serde_json::from_str(&upload(2000, "")).unwrap()).unwrap();
    assert!(enc.json_len > 1 << 17, "a body larger than the window");
    assert_eq!(&enc.body[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    assert_eq!(enc.body[4] & 0x20, 0, "a window descriptor is present");
    let (exponent, mantissa) = (enc.body[5] >> 3, enc.body[5] & 0x07);
    assert_eq!((10 + u32::from(exponent), mantissa), (16, 0));
}

#[test]
fn the_checksum_header_is_checked_before_the_body() {
    let (h, z) = body(&upload(1, ""));
    assert_eq!(crc_header(&z), format!("{:08x}", crc32fast::hash(&z)));
    for claimed in [None, Some("zz"), Some("")] {
        let e = decode(claimed, &z, &UploadLimits::PUBLISHED).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadRequest);
        assert_eq!(
            e.to_string(),
            "missing or bad header x-fieldsync-body-crc32"
        );
    }
    let other = format!("{:08x}", crc32(&z) ^ 1);
    assert_eq!(
        decode(Some(&other), &z, &UploadLimits::PUBLISHED)
            .unwrap_err()
            .code(),
        ErrorCode::Damaged
    );
    assert!(decode(Some(&h), &z, &UploadLimits::PUBLISHED).is_ok());
}

#[test]
fn bodies_that_are_not_uploads_are_refused_with_400() {
    let not_zstd = b"{\"upload_id\":1}".to_vec();
    let e = decode(
        Some(&crc_header(&not_zstd)),
        &not_zstd,
        &UploadLimits::PUBLISHED,
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest);
    assert!(e.to_string().starts_with("corrupt upload stream"), "{e}");
    let bad_id = upload(1, "").replace(&"a".repeat(32), "xyz");
    let (h, z) = body(&bad_id);
    let e = decode(Some(&h), &z, &UploadLimits::PUBLISHED).unwrap_err();
    assert_eq!(e.to_string(), "bad upload id (32 hex digits)");
    let (h, z) = body(&upload(1, "").replace(r#""task":"t""#, r#""task":"../x""#));
    let e = decode(Some(&h), &z, &UploadLimits::PUBLISHED).unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest);
    assert!(e.to_string().starts_with("bad task name"), "{e}");
    let (h, z) = body(r#"{"upload_id":"#);
    let e = decode(Some(&h), &z, &UploadLimits::PUBLISHED).unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest);
}

#[test]
fn a_window_larger_than_devices_use_is_refused() {
    // A frame that asks the decoder for a 128 MiB window (a decompression bomb's
    // first step) is refused before it is allocated.
    let text = upload(2, "");
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    enc.window_log(27).unwrap();
    enc.long_distance_matching(true).unwrap();
    enc.write_all(text.as_bytes()).unwrap();
    let z = enc.finish().unwrap();
    let e = decode(Some(&crc_header(&z)), &z, &UploadLimits::PUBLISHED).unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest, "{e}");
}
