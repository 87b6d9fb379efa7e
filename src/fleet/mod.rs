//! The fleet: many faceflow workers sharing cameras and file jobs through a NATS JetStream
//! cluster. Workers keep no shared state of their own: a camera runs where its lease (a
//! key-value entry that expires unless renewed) says, and every worker balances on what the
//! buckets say.
//!
//! - [`lease`]: when to renew a lease and when a worker cut off from NATS must stop a camera;
//! - [`balance`]: which cameras a worker claims or hands over;
//! - [`store`]: the buckets in NATS and the connection to them;
//! - [`continuity`]: a camera's numbers carried on across workers;
//! - [`jobs`]: the file jobs' work queue and states;
//! - [`publish`]: the records sink to JetStream;
//! - [`worker`]: the worker's loop.

pub mod balance;
pub mod continuity;
pub mod jobs;
pub mod lease;
pub mod publish;
pub mod store;
pub mod worker;
