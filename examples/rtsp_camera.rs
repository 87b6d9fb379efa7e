//! A stand-in RTSP camera for trying and soak-testing faceflow without hardware: serves a folder
//! of numbered JPEG frames (`00000.jpg`, `00001.jpg`, …) in an endless loop as live H.264 at
//! rtsp://127.0.0.1:PORT/camera.
//!
//!     cargo run --example rtsp_camera -- FRAMES_DIR [FPS] [PORT]
//!
//! scripts/soak.sh makes such a folder from a clip with gst-launch-1.0.

use gstreamer as gst;
use gstreamer::glib;
use gstreamer_rtsp_server as rtsp_server;
use gstreamer_rtsp_server::prelude::*;

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: rtsp_camera FRAMES_DIR [FPS] [PORT]";
    let dir = args.next().ok_or(usage)?;
    let fps: u32 = args
        .next()
        .map_or(Ok(10), |v| v.parse())
        .map_err(|_| usage)?;
    let port: u16 = args
        .next()
        .map_or(Ok(8554), |v| v.parse())
        .map_err(|_| usage)?;
    if !std::path::Path::new(&dir).join("00000.jpg").is_file() {
        return Err(format!("{dir}/00000.jpg: no such file"));
    }
    gst::init().map_err(|e| e.to_string())?;
    let server = rtsp_server::RTSPServer::new();
    server.set_address("127.0.0.1");
    server.set_service(&port.to_string());
    let factory = rtsp_server::RTSPMediaFactory::new();
    factory.set_launch(&format!(
        "( multifilesrc location={dir}/%05d.jpg loop=true caps=image/jpeg,framerate={fps}/1 \
         ! jpegdec ! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} \
         ! rtph264pay name=pay0 pt=96 )"
    ));
    factory.set_shared(true);
    server
        .mount_points()
        .ok_or("no mount points")?
        .add_factory("/camera", factory);
    let main_loop = glib::MainLoop::new(None, false);
    server.attach(None).map_err(|e| e.to_string())?;
    println!("serving rtsp://127.0.0.1:{}/camera", server.bound_port());
    main_loop.run();
    Ok(())
}
