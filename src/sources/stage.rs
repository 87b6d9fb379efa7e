//! The source stage of a run: one thread per stream, each into its own queue.

use crate::flow::RunContext;
use crate::graph::{Graph, Input, WhenFull};

use super::{Frame, Source};

/// Starts one thread per source, each into its own queue: live sources drop their oldest frame
/// when it is full, files wait. The queues, in the order of `sources`.
pub(crate) fn spawn(
    graph: &mut Graph,
    cx: &RunContext,
    sources: Vec<Source>,
    on_end: Option<crate::pipeline::StreamEndHook>,
) -> Vec<Input<Frame>> {
    let single = sources.len() == 1;
    sources
        .into_iter()
        .map(|source| {
            let info = source.info();
            let when_full = if info.live {
                WhenFull::DropOldest
            } else {
                WhenFull::Block
            };
            let name = if single {
                "frames".to_string()
            } else {
                format!("frames-{}", info.id)
            };
            let (out, frames) = graph.channel(name, source.queue_frames(), when_full);
            let stats = cx.stats.clone();
            let started = cx.started;
            let on_end = on_end.clone();
            graph.add_stage(format!("source-{}", info.id), move |c| {
                let (counts, result) = source.run(&out, c);
                // The queue ends with this stage after a failure too: this stream's frames decoded
                // before it are still detected and written, the failure is reported after them,
                // the other streams go on.
                let failure = result.err().map(|e| e.to_string());
                stats.update(|n| {
                    if let Some(end) = n.stream_ends.get_mut(info.index) {
                        *end = (counts, failure.clone(), started.elapsed().as_secs_f64());
                    }
                });
                if let Some(on_end) = &on_end {
                    on_end(&info.id, failure.as_deref());
                }
                Ok(())
            });
            frames
        })
        .collect()
}
