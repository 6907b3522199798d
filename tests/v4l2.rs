//! The v4l2 camera source through its real code path (the v4l crate), against a fake UVC camera that an
//! LD_PRELOAD shim emulates at the ioctl level: MJPEG and YUYV streaming, format negotiation, unplug and
//! replug.

mod common;

use common::broker::{Mosquitto, Subscriber, send_signal};
use common::scene::{
    Shot, THREE_VISITS, config, events, pair, picture_640x480, three_visits_expected, write_frames,
};
use common::{TempDir, data, face_edge, patience, slowdown};
use std::path::Path;
use std::process::{Child, Stdio};

const DEVICE: &str = "/dev/video-face-edge-test";

fn camera(format: &str) -> String {
    format!(
        "[[camera]]\nname = \"hall\"\nkind = \"v4l2\"\ndevice = \"{DEVICE}\"\nformat = \"{format}\"\nfps = 10\ndetect_fps = 10\n"
    )
}

fn start(cfg: &Path, frames: &Path, env: &[(&str, &str)]) -> Child {
    let mut cmd = face_edge();
    cmd.args(["run", "--config"])
        .arg(cfg)
        .env("LD_PRELOAD", common::fakecam::shim())
        .env("FAKECAM_DEVICE", DEVICE)
        .env("FAKECAM_FRAMES", frames)
        .env("FAKECAM_FPS", "10")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn stop(child: Child) -> String {
    send_signal(child.id(), "TERM");
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn mjpeg_camera_three_visits() {
    let broker = Mosquitto::start("");
    let sub = Subscriber::start(broker.port, "#");
    let dir = TempDir::new("v4l2-mjpeg");
    let frames = write_frames(&dir, THREE_VISITS);
    let cfg = config(
        &dir,
        &data("photos/gallery"),
        &camera("auto"),
        Some(&broker.url()),
        "",
    );
    let child = start(
        &cfg,
        &frames,
        &[("FAKECAM_FORMATS", "YUYV,MJPG"), ("FAKECAM_END", "loop")],
    );
    let all = sub.wait_for("three visits", patience(60), |all| events(all).len() >= 6);
    let stderr = stop(child);
    assert_eq!(
        events(&all)[..6].to_vec(),
        three_visits_expected(),
        "{stderr}"
    );
    assert!(
        stderr.contains("MJPG 640x480"),
        "auto prefers MJPEG: {stderr}"
    );
    let status = all
        .iter()
        .find(|m| m.topic == "face-edge/e2e/cam/hall/status")
        .unwrap()
        .json();
    assert_eq!(status["state"], "streaming");
}

/// Raw YUYV frames for the fake camera: each shot's picture written once, its frames linked to it
/// (stretched under emulation like `write_frames`).
fn write_yuyv_frames(dir: &TempDir, shots: &[Shot]) -> std::path::PathBuf {
    let frames = dir.path("yuyv");
    std::fs::create_dir_all(&frames).unwrap();
    let mut n = 0;
    for (shot, (photo, count)) in shots.iter().enumerate() {
        let picture = dir.path(&format!("shot{shot}.yuyv"));
        std::fs::write(
            &picture,
            face_edge::camera::yuyv::from_rgb(&picture_640x480(*photo)),
        )
        .unwrap();
        for _ in 0..*count * slowdown() as usize {
            n += 1;
            std::os::unix::fs::symlink(&picture, frames.join(format!("{n:05}.yuyv"))).unwrap();
        }
    }
    frames
}

#[test]
fn yuyv_camera_is_converted_and_recognised() {
    let broker = Mosquitto::start("");
    let sub = Subscriber::start(broker.port, "face-edge/e2e/events");
    let dir = TempDir::new("v4l2-yuyv");
    let frames = write_yuyv_frames(&dir, &[(Some("probes/obama1.jpg"), 15), (None, 15)]);
    let cfg = config(
        &dir,
        &data("photos/gallery"),
        &camera("auto"),
        Some(&broker.url()),
        "",
    );
    let child = start(&cfg, &frames, &[("FAKECAM_FORMATS", "YUYV")]);
    let all = sub.wait_for("obama", patience(60), |all| events(all).len() >= 2);
    let stderr = stop(child);
    assert_eq!(
        events(&all)[..2].to_vec(),
        vec![
            pair("recognized", Some("obama")),
            pair("left", Some("obama"))
        ]
    );
    assert!(stderr.contains("YUYV 640x480"), "{stderr}");
}

#[test]
fn a_device_without_a_usable_format_is_reported_with_what_it_offers() {
    let dir = TempDir::new("v4l2-format");
    let frames = write_frames(&dir, &[(None, 2)]);
    let cfg = config(&dir, &data("photos/gallery"), &camera("mjpeg"), None, "");
    let child = start(&cfg, &frames, &[("FAKECAM_FORMATS", "GREY,YUYV")]);
    std::thread::sleep(patience(5));
    let stderr = stop(child);
    assert!(
        stderr
            .contains("no usable format for Mjpeg; the device offers: GREY 640x480, YUYV 640x480"),
        "{stderr}"
    );
    assert!(
        stderr.contains("retrying in"),
        "retried, not fatal: {stderr}"
    );
    // A node that lists no capture format at all says so (not an empty list).
    let child = start(&cfg, &frames, &[("FAKECAM_FORMATS", "X")]);
    std::thread::sleep(patience(5));
    let stderr = stop(child);
    assert!(
        stderr.contains("the device offers: no capture format at all"),
        "{stderr}"
    );
}

#[test]
fn unplug_and_replug_resume_events_without_a_restart() {
    let broker = Mosquitto::start("");
    let sub = Subscriber::start(broker.port, "#");
    let dir = TempDir::new("v4l2-unplug");
    let frames = write_frames(&dir, &[(Some("probes/obama1.jpg"), 15), (None, 15)]);
    let flag = dir.path("unplugged");
    let cfg = config(
        &dir,
        &data("photos/gallery"),
        &camera("auto"),
        Some(&broker.url()),
        "",
    );
    let flag_text = flag.display().to_string();
    let child = start(
        &cfg,
        &frames,
        &[("FAKECAM_END", "enodev"), ("FAKECAM_UNPLUGGED", &flag_text)],
    );
    let pid = child.id();
    sub.wait_for("first visit and the unplug", patience(60), |all| {
        events(all).len() >= 2
            && all.iter().any(|m| {
                m.topic == "face-edge/e2e/cam/hall/status" && m.json()["state"] == "retrying"
            })
    });
    assert!(flag.exists(), "the fake camera unplugged itself");
    let retrying = sub
        .all()
        .into_iter()
        .rfind(|m| m.topic == "face-edge/e2e/cam/hall/status")
        .unwrap()
        .json();
    assert!(
        retrying["error"].as_str().unwrap().contains("ENODEV")
            || retrying["error"].as_str().unwrap().contains("No such file"),
        "{retrying}"
    );
    std::fs::remove_file(&flag).unwrap(); // replug
    let all = sub.wait_for("second visit after replug", patience(60), |all| {
        events(all).iter().filter(|e| e.0 == "recognized").count() >= 2
    });
    assert_eq!(child.id(), pid);
    let stderr = stop(child);
    let recognized: Vec<_> = events(&all)
        .into_iter()
        .filter(|e| e.0 == "recognized")
        .collect();
    assert_eq!(
        recognized[..2].to_vec(),
        vec![
            pair("recognized", Some("obama")),
            pair("recognized", Some("obama"))
        ]
    );
    assert!(stderr.contains("device unplugged (ENODEV)"), "{stderr}");
}
