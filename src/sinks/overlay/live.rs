//! The live overlay: each stream's drawn frames served over RTSP (gst-rtsp-server), so VLC,
//! ffplay or GStreamer can watch what faceflow sees. One mount (`/faces`), or one per stream
//! (`/faces/<stream id>`) with several streams. Frames go to whoever watches; with nobody
//! watching they are dropped at once, and a slow viewer never holds the run back (the newest
//! frames are kept).

use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_rtsp_server as rtsp_server;
use gstreamer_rtsp_server::prelude::*;

use super::OverlayError;

/// Where to serve: `rtsp://HOST:PORT/PATH`.
#[derive(Debug, Clone, PartialEq)]
pub struct RtspAddress {
    pub host: String,
    pub port: u16,
    /// Starts with '/'.
    pub path: String,
}

impl RtspAddress {
    /// Parses `rtsp://HOST[:PORT]/PATH` (port 8554 by default).
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("rtsp://")
            .ok_or("expected rtsp://HOST:PORT/PATH")?;
        // Before anything is split at a '/' or ':': a password may hold those, and a message
        // quoting a piece of it ("bad port …") would show it.
        if rest.contains('@') {
            return Err("a served overlay takes no user or password".into());
        }
        let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
        let path = path.trim_end_matches('/');
        if path.is_empty() {
            return Err(
                "no mount path: add one after the port, e.g. rtsp://0.0.0.0:8554/faces".into(),
            );
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("bad port '{p}'"))?),
            None => (hostport, 8554),
        };
        if host.is_empty() {
            return Err("no host (0.0.0.0 serves on every interface)".into());
        }
        Ok(Self {
            host: host.to_string(),
            port,
            path: format!("/{path}"),
        })
    }

    /// The mount of stream `id` when the run has `streams` streams.
    pub fn mount(&self, id: &str, streams: usize) -> String {
        if streams <= 1 {
            self.path.clone()
        } else {
            format!("{}/{id}", self.path)
        }
    }
}

/// One stream's feed: the frame size once known, and the source of the media a viewer is
/// watching (none while nobody is).
#[derive(Default)]
struct Feed {
    size: Option<(u32, u32)>,
    appsrc: Option<gst_app::AppSrc>,
}

/// The RTSP server of a run and its feeds.
pub struct RtspOverlay {
    address: RtspAddress,
    server: rtsp_server::RTSPServer,
    feeds: Vec<Arc<Mutex<Feed>>>,
    context: glib::MainContext,
    main_loop: glib::MainLoop,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RtspOverlay {
    /// Starts serving `streams` mounts (ids in order); a port that is taken fails here.
    pub fn start(address: RtspAddress, stream_ids: &[String]) -> Result<Self, OverlayError> {
        let shown = format!("rtsp://{}:{}{}", address.host, address.port, address.path);
        let fail = |message: String| OverlayError::Failed {
            target: shown.clone(),
            message,
        };
        gst::init().map_err(|e| fail(e.to_string()))?;
        // The port is tried first: gst-rtsp-server would only say so in a log line.
        std::net::TcpListener::bind((address.host.as_str(), address.port)).map_err(|e| {
            fail(format!(
                "cannot listen on {}:{}: {e}",
                address.host, address.port
            ))
        })?;
        let server = rtsp_server::RTSPServer::new();
        server.set_address(&address.host);
        server.set_service(&address.port.to_string());
        let mounts = server
            .mount_points()
            .ok_or_else(|| fail("the RTSP server has no mount points".into()))?;
        let mut feeds = Vec::new();
        for id in stream_ids {
            let feed = Arc::new(Mutex::new(Feed::default()));
            let factory = rtsp_server::RTSPMediaFactory::new();
            factory.set_launch(
                "( appsrc name=src is-live=true format=time do-timestamp=true \
                   ! videoconvert ! video/x-raw,format=I420 \
                   ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 \
                   ! rtph264pay name=pay0 pt=96 config-interval=1 )",
            );
            // One encoder per stream, whoever watches.
            factory.set_shared(true);
            let slot = feed.clone();
            factory.connect_media_configure(move |_, media| {
                let Some(src) = media
                    .element()
                    .downcast::<gst::Bin>()
                    .ok()
                    .and_then(|bin| bin.by_name("src"))
                    .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
                else {
                    return;
                };
                // Never hold the run back: a few frames queued, the oldest dropped.
                src.set_max_buffers(3);
                src.set_max_bytes(0);
                src.set_leaky_type(gst_app::AppLeakyType::Downstream);
                src.set_block(false);
                if let Ok(mut feed) = slot.lock() {
                    if let Some((w, h)) = feed.size {
                        src.set_caps(Some(&super::rgb_caps(w, h)));
                    }
                    feed.appsrc = Some(src);
                }
            });
            mounts.add_factory(&address.mount(id, stream_ids.len()), factory);
            feeds.push(feed);
        }
        let ctx = glib::MainContext::new();
        server
            .attach(Some(&ctx))
            .map_err(|e| fail(format!("cannot serve: {e}")))?;
        let main_loop = glib::MainLoop::new(Some(&ctx), false);
        let running = main_loop.clone();
        let context = ctx.clone();
        let thread = std::thread::Builder::new()
            .name("rtsp-overlay".into())
            .spawn(move || {
                let _ = ctx.with_thread_default(|| running.run());
            })
            .map_err(|e| fail(e.to_string()))?;
        tracing::info!("serving the overlay at {shown}");
        Ok(Self {
            address,
            server,
            feeds,
            context,
            main_loop,
            thread: Some(thread),
        })
    }

    pub fn address(&self) -> &RtspAddress {
        &self.address
    }

    /// Whether anyone watches stream `stream` now (else its frames need not be drawn).
    pub fn watching(&self, stream: usize) -> bool {
        self.feeds
            .get(stream)
            .and_then(|f| f.lock().ok().map(|f| f.appsrc.is_some()))
            .unwrap_or(false)
    }

    /// Hands stream `stream`'s drawn frame (packed RGB, rows padded for GStreamer) to its viewers.
    pub fn push(&self, stream: usize, width: u32, height: u32, rgb: Vec<u8>) {
        let Some(feed) = self.feeds.get(stream) else {
            return;
        };
        let Ok(mut feed) = feed.lock() else { return };
        if feed.size != Some((width, height)) {
            feed.size = Some((width, height));
            if let Some(src) = &feed.appsrc {
                src.set_caps(Some(&super::rgb_caps(width, height)));
            }
        }
        let Some(src) = feed.appsrc.clone() else {
            return;
        };
        if src.push_buffer(gst::Buffer::from_mut_slice(rgb)).is_err() {
            // The media was torn down (its last viewer left): the next viewer gets a new one.
            feed.appsrc = None;
        }
    }

    /// Ends every feed and stops serving.
    pub fn stop(&mut self) {
        for feed in &self.feeds {
            if let Ok(mut feed) = feed.lock()
                && let Some(src) = feed.appsrc.take()
            {
                let _ = src.end_of_stream();
            }
        }
        self.server
            .client_filter(Some(&mut |_, _| rtsp_server::RTSPFilterResult::Remove));
        // Through the context: a quit() called before the thread has entered run() would be
        // lost, and the join below would wait for good.
        let main_loop = self.main_loop.clone();
        self.context.invoke(move || main_loop.quit());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RtspOverlay {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_mounts() {
        let a = RtspAddress::parse("rtsp://0.0.0.0:8555/faces").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.path.as_str()),
            ("0.0.0.0", 8555, "/faces")
        );
        assert_eq!(a.mount("0", 1), "/faces");
        assert_eq!(a.mount("lobby", 2), "/faces/lobby");
        assert_eq!(
            RtspAddress::parse("rtsp://127.0.0.1/x/").unwrap().port,
            8554
        );
        for bad in [
            "rtsp://0.0.0.0:8554",
            "rtsp://:8554/f",
            "rtsp://h:x/f",
            "rtsp://u:p@h/f",
            "rtsp://u:p/1@h/f",
        ] {
            assert!(RtspAddress::parse(bad).is_err(), "{bad}");
        }
    }
}
