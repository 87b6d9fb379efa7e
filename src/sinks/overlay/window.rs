//! The window overlay: each stream's drawn frames shown in a window on this machine's display
//! (GStreamer's autovideosink), for someone sitting at it. The display is checked before the run:
//! without one the run does not start and says why in one line (GStreamer's X11 sinks may take
//! the whole process down on a display that does not answer). Frames are shown as they are
//! drawn; a window that cannot keep up drops old frames, never holds the run back. Closing a
//! window stops showing that stream; the run goes on.

use std::path::PathBuf;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

/// The display a window would open on, or why there is none: `DISPLAY` (X11) or
/// `WAYLAND_DISPLAY`, and its server answering on its socket.
pub fn check_display() -> Result<String, String> {
    let wayland = std::env::var("WAYLAND_DISPLAY")
        .ok()
        .filter(|v| !v.is_empty());
    if let Some(name) = &wayland {
        let socket = if name.starts_with('/') {
            PathBuf::from(name)
        } else {
            PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR").unwrap_or_default()).join(name)
        };
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Ok(format!("Wayland display {name}"));
        }
    }
    let x11 = std::env::var("DISPLAY").ok().filter(|v| !v.is_empty());
    if let Some(display) = &x11 {
        return if x11_answers(display) {
            Ok(format!("X display {display}"))
        } else {
            Err(format!(
                "the X display {display} (DISPLAY) does not answer; start it, or write the overlay to an .mp4 file or serve it over rtsp://"
            ))
        };
    }
    Err(match wayland {
        Some(name) => format!(
            "the Wayland display {name} (WAYLAND_DISPLAY) does not answer; write the overlay to an .mp4 file or serve it over rtsp:// instead"
        ),
        None => "no display here (neither DISPLAY nor WAYLAND_DISPLAY is set); write the overlay to an .mp4 file or serve it over rtsp:// instead".into(),
    })
}

/// Whether the X server of `display` (`[host]:number[.screen]`) accepts a connection.
fn x11_answers(display: &str) -> bool {
    let Some((host, rest)) = display.rsplit_once(':') else {
        return false;
    };
    let Ok(number) = rest.split('.').next().unwrap_or("").parse::<u16>() else {
        return false;
    };
    if host.is_empty() || host == "unix" {
        let path = format!("/tmp/.X11-unix/X{number}");
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return true;
        }
        // Servers in some containers listen only on the abstract socket of the same name.
        use std::os::linux::net::SocketAddrExt;
        return std::os::unix::net::SocketAddr::from_abstract_name(path.as_bytes())
            .and_then(|a| std::os::unix::net::UnixStream::connect_addr(&a))
            .is_ok();
    }
    use std::net::ToSocketAddrs;
    let Ok(mut addresses) = (host, 6000u16.saturating_add(number)).to_socket_addrs() else {
        return false;
    };
    addresses.any(|a| {
        std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).is_ok()
    })
}

/// Video sinks autovideosink may pick for a desktop display.
const DISPLAY_SINKS: [&str; 4] = ["xvimagesink", "ximagesink", "waylandsink", "glimagesink"];

/// One window per stream, opened at the stream's first frame.
pub struct WindowOverlay {
    stream_ids: Vec<String>,
    windows: Vec<Option<Window>>,
    /// Streams whose window was closed or failed: not shown again.
    closed: Vec<bool>,
}

struct Window {
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    size: (u32, u32),
}

impl WindowOverlay {
    /// Checks the display and the elements a window needs; opens nothing yet.
    pub fn open(stream_ids: &[String]) -> Result<Self, String> {
        let found = check_display()?;
        gst::init().map_err(|e| e.to_string())?;
        for factory in ["appsrc", "videoconvert", "autovideosink"] {
            if gst::ElementFactory::find(factory).is_none() {
                return Err(format!("GStreamer element {factory} is missing"));
            }
        }
        if !DISPLAY_SINKS
            .iter()
            .any(|f| gst::ElementFactory::find(f).is_some())
        {
            return Err(format!(
                "no GStreamer video sink for the {found} (install gstreamer1.0-x or gstreamer1.0-gl)"
            ));
        }
        tracing::info!("overlay: showing each stream in a window on the {found}");
        Ok(Self {
            stream_ids: stream_ids.to_vec(),
            windows: Vec::new(),
            closed: vec![false; stream_ids.len()],
        })
    }

    /// Whether `stream`'s frames are shown (its window was not closed).
    pub fn showing(&self, stream: usize) -> bool {
        !self.closed.get(stream).copied().unwrap_or(true)
    }

    /// Shows a drawn frame of `stream`: `rgb` is `width`×`height` RGB with rows padded to 4
    /// bytes (GStreamer's layout).
    pub fn show(&mut self, stream: usize, width: u32, height: u32, rgb: Vec<u8>) {
        if self.closed.get(stream).copied().unwrap_or(true) {
            return;
        }
        if self.windows.len() <= stream {
            self.windows.resize_with(stream + 1, || None);
        }
        let id = self.stream_ids.get(stream).cloned().unwrap_or_default();
        if self.windows[stream]
            .as_ref()
            .is_some_and(|w| w.size != (width, height))
        {
            // A camera back at another size: a new window of that size.
            self.end(stream, false);
        }
        if self.windows[stream].is_none() {
            // A bare X server (no desktop) resets when its last client leaves, and refuses
            // connections meanwhile: one more try after a moment.
            let opened = Window::open(&id, width, height).or_else(|_| {
                std::thread::sleep(std::time::Duration::from_millis(300));
                Window::open(&id, width, height)
            });
            match opened {
                Ok(w) => self.windows[stream] = Some(w),
                Err(e) => {
                    tracing::warn!("overlay window of stream {id}: {e}; not shown");
                    self.closed[stream] = true;
                    return;
                }
            }
        }
        let Some(window) = &self.windows[stream] else {
            return;
        };
        if let Some(reason) = window.failure() {
            tracing::warn!("overlay window of stream {id}: {reason}; no longer shown");
            self.end(stream, true);
            return;
        }
        // Refused only when the window is going away; the bus says why at the next frame.
        let _ = window.appsrc.push_buffer(gst::Buffer::from_mut_slice(rgb));
    }

    /// Closes `stream`'s window (its stream ended, or `for_good` after a failure).
    pub fn end(&mut self, stream: usize, for_good: bool) {
        if let Some(window) = self.windows.get_mut(stream).and_then(Option::take) {
            let _ = window.pipeline.set_state(gst::State::Null);
        }
        if for_good && let Some(c) = self.closed.get_mut(stream) {
            *c = true;
        }
    }

    /// Closes every window.
    pub fn close(&mut self) {
        for stream in 0..self.windows.len() {
            self.end(stream, true);
        }
    }
}

impl Window {
    fn open(stream_id: &str, width: u32, height: u32) -> Result<Self, String> {
        // Two frames at most waiting; a window that lags shows the newest.
        let appsrc = gst_app::AppSrc::builder()
            .caps(&super::rgb_caps(width, height))
            .format(gst::Format::Time)
            .is_live(true)
            .do_timestamp(true)
            .block(false)
            .max_buffers(2)
            .leaky_type(gst_app::AppLeakyType::Downstream)
            .build();
        let make = |factory: &str| {
            gst::ElementFactory::make(factory)
                .build()
                .map_err(|_| format!("GStreamer element {factory} is missing"))
        };
        let convert = make("videoconvert")?;
        let sink = make("autovideosink")?;
        // Shown when drawn, not held to a clock.
        sink.set_property("sync", false);
        let pipeline = gst::Pipeline::new();
        let elements = [appsrc.upcast_ref::<gst::Element>(), &convert, &sink];
        pipeline.add_many(elements).map_err(|e| e.to_string())?;
        gst::Element::link_many(elements).map_err(|e| e.to_string())?;
        if pipeline.set_state(gst::State::Playing).is_err() {
            // The bus has the sink's reason (no display connection, no video output).
            let reason = super::pipeline_error(&pipeline)
                .unwrap_or_else(|| "the video sink did not start".into());
            let _ = pipeline.set_state(gst::State::Null);
            return Err(format!("cannot open the window: {reason}"));
        }
        // The window's title names the stream.
        let mut tags = gst::TagList::new();
        if let Some(t) = tags.get_mut() {
            t.add::<gst::tags::Title>(
                &format!("faceflow: {stream_id}").as_str(),
                gst::TagMergeMode::Replace,
            );
        }
        appsrc.send_event(gst::event::Tag::new(tags));
        Ok(Self {
            pipeline,
            appsrc,
            size: (width, height),
        })
    }

    /// Why the window stopped (closed by its user, display gone), if it did.
    fn failure(&self) -> Option<String> {
        super::pipeline_error(&self.pipeline)
    }
}

impl Drop for WindowOverlay {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_that_cannot_answer_are_refused() {
        for display in ["", "nonsense", ":x", "127.0.0.1:9999x"] {
            assert!(!x11_answers(display), "{display}");
        }
        // Display 599: nobody listens on its socket (6599 or /tmp/.X11-unix/X599).
        assert!(!x11_answers(":599"));
    }
}
