//! Bad input through the CLI: every failing file gets one line naming it and the cause, the others are
//! still processed, and the exit status says something failed. Awkward but valid pixel formats work.

mod common;

use common::{TempDir, data, face_edge, run};
use image::{DynamicImage, ImageFormat};
use std::path::Path;

fn photo() -> DynamicImage {
    image::open(data("photos/probes/obama1.jpg")).unwrap()
}

/// A PNG whose header claims `w` x `h` pixels, with valid chunk CRCs and a tiny (bogus) data chunk.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A real (small) JPEG whose frame header claims `w` x `h` pixels.
fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
    let mut bytes = Vec::new();
    DynamicImage::new_rgb8(16, 16)
        .write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Jpeg)
        .unwrap();
    // SOF0: FF C0, length (2), precision (1), height (2), width (2).
    let sof = bytes.windows(2).position(|m| m == [0xff, 0xc0]).unwrap();
    bytes[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    bytes
}

fn save(img: &DynamicImage, path: &Path) {
    img.save_with_format(path, ImageFormat::Png).unwrap();
}

#[test]
fn each_bad_file_is_one_named_error_and_the_rest_is_processed() {
    let dir = TempDir::new("bad");
    let jpeg = std::fs::read(data("photos/probes/obama1.jpg")).unwrap();
    std::fs::write(dir.path("truncated.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    std::fs::write(dir.path("notes.jpg"), b"this is not an image\n").unwrap();
    std::fs::write(dir.path("empty.png"), b"").unwrap();
    std::fs::write(dir.path("huge.png"), png_claiming(100_000, 80_000)).unwrap();
    // Inside the 16384 px a side, but 256 MP: refused from its header, nothing allocated.
    std::fs::write(dir.path("bomb.jpg"), jpeg_claiming(16_000, 16_000)).unwrap();
    save(&DynamicImage::new_rgb8(320, 240), &dir.path("no_face.png"));
    let png = std::fs::read(data("photos/probes/32bit.png")).unwrap();
    std::fs::write(dir.path("cut.png"), &png[..png.len() / 2]).unwrap();
    let good = data("photos/probes/obama1.jpg");
    let missing = dir.path("missing.jpg");

    let bad = [
        "truncated.jpg",
        "cut.png",
        "notes.jpg",
        "empty.png",
        "huge.png",
        "bomb.jpg",
        "no_face.png",
    ];
    let mut cmd = face_edge();
    cmd.args(["embed", "--model", "mobilefacenet", "--jsonl"])
        .arg(&good)
        .arg(&missing);
    for b in bad {
        cmd.arg(dir.path(b));
    }
    let (code, stdout, stderr) = run(&mut cmd);
    assert_eq!(code, 1, "partial failure exits 1; stderr:\n{stderr}");

    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2 + bad.len(), "one record per input");
    assert!(
        records[0]["error"].is_null() && records[0]["faces"].as_array().unwrap().len() == 1,
        "good file embedded"
    );

    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("face-edge: error:"))
        .collect();
    assert_eq!(
        errors.len(),
        1 + bad.len(),
        "one line per bad file:\n{stderr}"
    );
    let expect = |name: &str, cause: &str| {
        let line = errors
            .iter()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no error for {name}:\n{stderr}"));
        assert!(line.to_lowercase().contains(cause), "{name}: {line}");
    };
    expect("missing.jpg", "no such file");
    expect("truncated.jpg", "truncated");
    expect("cut.png", "corrupt or truncated");
    expect("notes.jpg", "not a jpeg, png, tiff, webp or bmp");
    expect("empty.png", "not a jpeg, png, tiff, webp or bmp");
    expect("huge.png", "too large");
    expect(
        "bomb.jpg",
        "too large (16000x16000 = 256.0 mp; photos are limited to 50.5 mp)",
    );
    expect("no_face.png", "no face");
}

#[test]
fn a_directory_is_walked_for_images_only() {
    let dir = TempDir::new("walk");
    std::fs::create_dir(dir.path("sub")).unwrap();
    std::fs::copy(data("photos/probes/obama1.jpg"), dir.path("sub/a.jpg")).unwrap();
    std::fs::write(dir.path("readme.txt"), b"not an image").unwrap();
    let (code, stdout, _) = run(face_edge().args(["detect", "--json"]).arg(&dir.0));
    assert_eq!(code, 0);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("sub/a.jpg"));
}

#[test]
fn sixteen_bit_grey_and_rgba_images_are_converted_not_refused() {
    let dir = TempDir::new("formats");
    let img = photo();
    save(
        &DynamicImage::ImageRgb16(img.to_rgb16()),
        &dir.path("rgb16.png"),
    );
    save(
        &DynamicImage::ImageLuma8(img.to_luma8()),
        &dir.path("grey.png"),
    );
    save(
        &DynamicImage::ImageLumaA16(img.to_luma_alpha16()),
        &dir.path("grey_alpha16.png"),
    );
    let rgba = data("photos/probes/32bit.png");
    assert_eq!(
        image::open(&rgba).unwrap().color(),
        image::ColorType::Rgba8,
        "fixture is RGBA"
    );
    let reference = dir.path("rgb8.png");
    save(&DynamicImage::ImageRgb8(img.to_rgb8()), &reference);

    let (code, stdout, stderr) = run(face_edge()
        .args(["embed", "--model", "mobilefacenet", "--largest", "--jsonl"])
        .arg(&reference)
        .arg(dir.path("rgb16.png"))
        .arg(dir.path("grey.png"))
        .arg(dir.path("grey_alpha16.png"))
        .arg(&rgba));
    assert_eq!(code, 0, "{stderr}");
    let emb: Vec<Vec<f32>> = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            common::vec_f32(&v["faces"][0]["embedding"])
        })
        .collect();
    let c16 = face_edge::embed::cosine(&emb[0], &emb[1]);
    assert!(c16 > 0.999, "16-bit copy embeds like the 8-bit one: {c16}");
    for (i, e) in emb[2..].iter().enumerate() {
        let c = face_edge::embed::cosine(&emb[0], e);
        assert!(c > 0.6, "input {} is the same person: cosine {c}", i + 2);
    }
}

#[test]
fn detect_reports_zero_faces_without_failing() {
    let dir = TempDir::new("zero");
    save(&DynamicImage::new_rgb8(64, 48), &dir.path("blank.png"));
    let (code, stdout, _) = run(face_edge()
        .args(["detect", "--json"])
        .arg(dir.path("blank.png")));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["faces"].as_array().unwrap().len(), 0);
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(64), Some(48))
    );
}

/// A number that passes TOML but would stop the service (NaN, negative seconds) is a configuration
/// error naming the file, key and unit, for `gallery check` and `run` alike, and `run` exits 78 (which
/// the unit's RestartPreventExitStatus keeps systemd from restarting into).
#[test]
fn impossible_numbers_in_the_config_are_errors_before_anything_runs() {
    let tmp = TempDir::new("bad-numbers");
    for (section, key) in [
        (
            "[service]\nstall_timeout_s = nan",
            "service.stall_timeout_s",
        ),
        (
            "[service]\nstall_timeout_s = -1.0",
            "service.stall_timeout_s",
        ),
        ("[tracking]\nlost_after_s = nan", "tracking.lost_after_s"),
    ] {
        let config = tmp.path("face-edge.toml");
        std::fs::write(
            &config,
            format!("state_dir = \"{}\"\n[[camera]]\nname = \"hall\"\nkind = \"files\"\npath = \"x\"\n{section}\n", tmp.path("state").display()),
        )
        .unwrap();
        let (code, _, stderr) = run(face_edge().arg("run").arg("--config").arg(&config));
        assert_eq!(code, 78, "{stderr}");
        assert!(
            stderr.contains(&config.display().to_string())
                && stderr.contains(key)
                && stderr.contains("seconds"),
            "{stderr}"
        );
        let (code, _, stderr) = run(face_edge()
            .args(["gallery", "check", "--config"])
            .arg(&config));
        assert_ne!(code, 0);
        assert!(stderr.contains(key), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Credentials in the URL are refused without being echoed; a password needs a user name.
    for (mqtt, key) in [
        ("url = \"mqtt://edge:s3cret@localhost\"", "mqtt.url"),
        (
            "url = \"mqtt://localhost\"\npassword_file = \"pw\"",
            "mqtt.password_file",
        ),
    ] {
        let config = tmp.path("mqtt.toml");
        std::fs::write(&config, format!("[mqtt]\n{mqtt}\n")).unwrap();
        let (code, _, stderr) = run(face_edge()
            .args(["gallery", "check", "--config"])
            .arg(&config));
        assert_ne!(code, 0);
        assert!(
            stderr.contains(key) && !stderr.contains("s3cret"),
            "{stderr}"
        );
    }
    // A configuration every user can change (it can name programs to run) is loaded with a warning.
    let config = tmp.path("open.toml");
    std::fs::write(
        &config,
        format!("state_dir = \"{}\"\n", tmp.path("state").display()),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let (_, _, stderr) = run(face_edge()
        .args(["gallery", "check", "--config"])
        .arg(&config));
    assert!(
        stderr.contains("every user can write this configuration"),
        "{stderr}"
    );
}

/// A state directory that is a file is reported once, as such (not "File exists (os error 17)").
#[test]
fn a_state_dir_that_is_a_file_is_named_once() {
    let tmp = TempDir::new("state-file");
    let state = tmp.path("state");
    std::fs::write(&state, "not a directory").unwrap();
    let (code, _, stderr) = run(face_edge()
        .args(["gallery", "sync", "--model", "mobilefacenet", "--gallery"])
        .arg(data("photos/gallery"))
        .arg("--state-dir")
        .arg(&state));
    assert_ne!(code, 0);
    assert_eq!(
        stderr.matches("is a file, not a directory").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains(&state.display().to_string()), "{stderr}");
}
